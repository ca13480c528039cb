"""Score customers with an exported model: python scripts/score.py model_path=M events_path=E output_path=O

The same as `churnwatch score ...` (src/churnwatch/cli/score.py): a thin wrapper.
"""

from churnwatch.cli.score import main

if __name__ == "__main__":
    main()
