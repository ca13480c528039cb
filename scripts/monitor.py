"""Monitor an exported model on today's data: python scripts/monitor.py model_path=M events_path=E

The same as `churnwatch monitor ...` (src/churnwatch/cli/monitor.py): a thin wrapper.
"""

from churnwatch.cli.monitor import main

if __name__ == "__main__":
    main()
