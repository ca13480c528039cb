"""Serve an exported model over HTTP: python scripts/serve.py model_path=M [port=8000] [workers=1]

The same as `churnwatch serve ...` (src/churnwatch/cli/serve.py): a thin wrapper.
"""

from churnwatch.cli.serve import main

if __name__ == "__main__":
    main()
