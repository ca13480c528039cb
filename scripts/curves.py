"""Learning / validation curves: python scripts/curves.py kind=learning|validation model=M [...]

The same as `churnwatch curves ...` (src/churnwatch/cli/curves.py): a thin wrapper.
"""

from churnwatch.cli.curves import main

if __name__ == "__main__":
    main()
