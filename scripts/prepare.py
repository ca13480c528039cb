"""Dry-run the data path: python scripts/prepare.py [data=online_retail] [data.<key>=value ...]

The same as `churnwatch prepare ...` (src/churnwatch/cli/prepare.py): a thin wrapper.
"""

from churnwatch.cli.prepare import main

if __name__ == "__main__":
    main()
