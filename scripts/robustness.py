"""The robustness study: python scripts/robustness.py model_paths=[M,...] events_path=E as_of=DATE

The same as `churnwatch robustness ...` (src/churnwatch/cli/robustness.py): a thin wrapper.
"""

from churnwatch.cli.robustness import main

if __name__ == "__main__":
    main()
