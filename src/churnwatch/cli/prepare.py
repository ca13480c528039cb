"""`churnwatch prepare [data=online_retail] [data.<key>=value ...] [engine=ray ray.address=... ...]`"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from churnwatch.cli.app import command, require_packages
from churnwatch.errors import ConfigError

log = logging.getLogger("churnwatch.prepare")


@command("prepare")
def main(cfg: DictConfig) -> None:
    """Dry-run the data path: validate, build snapshots and splits, fit the encoders, encode, and write
    data_report.json into the run dir (engine=ray: on a Ray cluster, into the encoded-snapshot cache)."""
    from churnwatch.pipeline.build import build_data

    run_dir = Path(cfg.paths.output_dir)
    log.info("run dir: %s", run_dir)
    if cfg.engine == "ray":
        require_packages("churnwatch prepare", ("ray", "ray.data"), "distributed")
        from churnwatch.jobs.prepare_ray import prepare_on_ray

        data = prepare_on_ray(cfg.data, OmegaConf.to_object(cfg.ray), int(cfg.part_events))
    elif cfg.engine == "local":
        data = build_data(cfg.data)
    else:
        raise ConfigError(f"engine must be 'local' or 'ray', got {cfg.engine!r}")
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
