"""Rank the union of shard parts as one run: python scripts/merge_scores.py model_path=M parts=P output_path=O

The same as `churnwatch merge-scores ...` (src/churnwatch/cli/merge_scores.py): a thin wrapper.
"""

from churnwatch.cli.merge_scores import main

if __name__ == "__main__":
    main()
