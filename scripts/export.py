"""Export a checkpoint as one self-contained TorchScript file: python scripts/export.py ckpt_path=...

The same as `churnwatch export ...` (src/churnwatch/cli/export.py): a thin wrapper.
"""

from churnwatch.cli.export import main

if __name__ == "__main__":
    main()
