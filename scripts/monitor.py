"""Monitor an exported model on today's data: python scripts/monitor.py model_path=M events_path=E

Writes monitor.json and prints the verdict (ok / warn / retrain) with its reasons. The exit code is 0
whatever the verdict; an input that cannot be read or used is one line on stderr and exit code 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from churnwatch.cli import one_line_errors
from churnwatch.monitor_job import LabelSource, render, run_monitor, write_report


@hydra.main(version_base="1.3", config_path="../conf", config_name="monitor")
@one_line_errors
def main(cfg: DictConfig) -> None:
    report = run_monitor(
        cfg.model_path,
        cfg.events_path,
        OmegaConf.to_container(cfg.thresholds, resolve=True),
        cfg.customers_path,
        cfg.as_of,
        list(cfg.features) if cfg.features else None,
        LabelSource(cfg.labels_path, cfg.labels.customer_id, cfg.labels.label, cfg.labels.cutoff),
        cfg.device,
    )
    console = Console(width=max(Console().width, 120))
    render(report, console)
    console.print(f"report: {write_report(report, cfg.output_dir)}")


if __name__ == "__main__":
    main()
