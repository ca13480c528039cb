"""Ensemble finished runs: python scripts/ensemble.py members=[RUN_DIR,RUN_DIR,...]

The same as `churnwatch ensemble ...` (src/churnwatch/cli/ensemble.py): a thin wrapper.
"""

from churnwatch.cli.ensemble import main

if __name__ == "__main__":
    main()
