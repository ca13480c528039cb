"""Write a run's HTML report: python scripts/report.py run_dir=checkpoints/demo

The same as `churnwatch report ...` (src/churnwatch/cli/report.py): a thin wrapper.
"""

from churnwatch.cli.report import main

if __name__ == "__main__":
    main()
