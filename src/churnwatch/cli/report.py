"""`churnwatch report run_dir=checkpoints/demo`"""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console

from churnwatch.cli.app import command


@command("report")
def main(cfg: DictConfig) -> None:
    """Write a training run's self-contained HTML report (report.html in the run dir)."""
    from churnwatch.runs.report import write_report

    Console().print(f"report → {write_report(cfg.run_dir)}")


if __name__ == "__main__":
    main()
