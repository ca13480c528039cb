"""`churnwatch prepare [data=online_retail] [data.<key>=value ...]`"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from churnwatch.cli.app import command

log = logging.getLogger("churnwatch.prepare")


@command("prepare")
def main(cfg: DictConfig) -> None:
    """Dry-run the data path: validate, build snapshots and splits, fit the encoders, encode, and write
    data_report.json into the run dir."""
    from churnwatch.pipeline.build import build_data

    run_dir = Path(cfg.paths.output_dir)
    log.info("run dir: %s", run_dir)
    data = build_data(cfg.data)
    summary = data.summary()
    report_file = data.write_report(run_dir)

    console = Console()
    for report in data.reports:
        console.print(f"[bold]validation[/bold] {report.summary()}")
    table = Table(title=f"snapshots (horizon {data.plan.horizon_days} days)")
    for col in ("split", "cutoff", "customers", "churn rate"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name in ("train", "val", "test"):
        info = summary[name]
        for cutoff, row in (info or {}).get("per_cutoff", {}).items():
            table.add_row(name, cutoff, f"{row['customers']:,}", f"{row['churn_rate']:.1%}")
    console.print(table)
    seq = summary["sequence_features"]
    console.print(
        f"sequence features: {len(seq['categorical'])} categorical {seq['categorical']}, "
        f"{len(seq['numeric'])} numeric, max_len {seq['max_len']}; "
        f"{len(summary['aggregate_features'])} aggregate features"
    )
    console.print(f"report: {report_file}")


if __name__ == "__main__":
    main()
