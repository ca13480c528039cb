"""Train a churn model: python scripts/train.py [model=...] [trainer=cpu|gpu|ddp] [...]

The same as `churnwatch train ...` (src/churnwatch/cli/train.py): a thin wrapper.
"""

from churnwatch.cli.train import main

if __name__ == "__main__":
    main()
