"""Score customers with an exported model: python scripts/score.py model_path=M events_path=E output_path=O"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from churnwatch.cli import one_line_errors
from churnwatch.scoring import score_file

log = logging.getLogger("churnwatch.score")


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
@one_line_errors
def main(cfg: DictConfig) -> None:
    result = score_file(
        cfg.model_path,
        cfg.events_path,
        cfg.output_path,
        cfg.customers_path,
        cfg.as_of,
        cfg.device,
        int(cfg.batch_size) if cfg.batch_size else None,
        int(cfg.chunk_customers),
        bool(cfg.overwrite),
        drivers=OmegaConf.to_container(cfg.drivers, resolve=True),
        playbook=OmegaConf.to_container(cfg.playbook, resolve=True),
        rank_by=str(cfg.rank_by),
        value_days=int(cfg.value_days),
        shard=(int(cfg.num_shards), int(cfg.shard_index)) if cfg.num_shards else None,
        part_events=int(cfg.part_events),
        block_rows=int(cfg.block_rows),
        spill_dir=cfg.spill_dir,
        precision=str(cfg.precision),
    )
    console = Console(width=max(Console().width, 100))
    if cfg.num_shards:
        console.print(
            f"shard {cfg.shard_index}/{cfg.num_shards}: scored {result.scored:,} customers in "
            f"{result.seconds:.1f}s → {result.output_path} (unranked; scripts/merge_scores.py ranks parts)"
        )
        return
    console.print(
        f"scored {result.scored:,} customers ({result.no_history:,} without history before as_of) "
        f"in {result.seconds:.1f}s ({result.parts} part(s)) → {result.output_path}"
    )
    top = result.top.head(int(cfg.show_top))
    table = Table(
        title=f"riskiest {len(top)} customers (as of {top['as_of'].iloc[0].date() if len(top) else '-'})"
    )
    numbers = ("risk_rank", "churn_probability", "value_at_risk")
    for col in (
        "risk_rank",
        "customer_id",
        "churn_probability",
        "risk_tier",
        "value_at_risk",
        "driver_1",
        "action",
    ):
        table.add_column(col, justify="right" if col in numbers else "left")
    for row in top.itertuples():
        table.add_row(
            str(row.risk_rank),
            str(row.customer_id),
            f"{row.churn_probability:.3f}",
            row.risk_tier,
            f"{row.value_at_risk:,.0f}",
            row.driver_1,
            row.action,
        )
    console.print(table)


if __name__ == "__main__":
    main()
