"""Train and rank models on one dataset: python scripts/leaderboard.py experiment=E models=[...]

The same as `churnwatch leaderboard ...` (src/churnwatch/cli/leaderboard.py): a thin wrapper.
"""

from churnwatch.cli.leaderboard import main

if __name__ == "__main__":
    main()
