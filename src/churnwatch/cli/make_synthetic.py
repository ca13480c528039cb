"""`churnwatch make-synthetic out_dir=DIR n_customers=N seed=S [start=... end=...]`"""

from __future__ import annotations

import time

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from churnwatch.cli.app import command


@command("make_synthetic")
def main(cfg: DictConfig) -> None:
    """Write the built-in synthetic data set: events, customers and ground truth as parquet."""
    from churnwatch.data.synthetic import generate, write

    console = Console()
    t0 = time.perf_counter()
    data = generate(
        int(cfg.n_customers),
        int(cfg.seed),
        start=str(cfg.start),
        end=str(cfg.end),
        extra_lines_per_purchase=cfg.get("extra_lines_per_purchase"),
    )
    t1 = time.perf_counter()
    paths = write(data, cfg.out_dir)
    t2 = time.perf_counter()

    table = Table(
        title=f"synthetic data: {cfg.n_customers:,} customers, seed {cfg.seed}, {cfg.start} .. {cfg.end}"
    )
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("path")
    for name, path in paths.items():
        table.add_row(name, f"{len(getattr(data, name)):,}", str(path))
    console.print(table)

    truth = data.truth
    drivers = truth.loc[truth["churned"], "dominant_driver"].value_counts(normalize=True)
    console.print(f"events per customer: {len(data.events) / len(truth):.1f}")
    console.print(f"churned by {cfg.end}: {truth['churned'].mean():.1%} of customers")
    console.print("drivers among churners: " + ", ".join(f"{k} {v:.0%}" for k, v in drivers.items() if v > 0))
    console.print(f"time: generate {t1 - t0:.1f}s, write {t2 - t1:.1f}s, total {t2 - t0:.1f}s")


if __name__ == "__main__":
    main()
