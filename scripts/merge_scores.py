"""Rank the union of shard parts as one run.

python scripts/merge_scores.py model_path=M parts='out/part-*.parquet' output_path=O
"""

from __future__ import annotations

import glob

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from churnwatch.cli import one_line_errors
from churnwatch.scoring import merge_shards


@hydra.main(version_base="1.3", config_path="../conf", config_name="merge_scores")
@one_line_errors
def main(cfg: DictConfig) -> None:
    parts = cfg.parts if not isinstance(cfg.parts, str) else sorted(glob.glob(cfg.parts))
    customers = merge_shards(
        cfg.model_path,
        list(parts),
        cfg.output_path,
        playbook=OmegaConf.to_container(cfg.playbook, resolve=True),
        rank_by=str(cfg.rank_by),
        overwrite=bool(cfg.overwrite),
        block_rows=int(cfg.block_rows),
    )
    Console().print(f"merged {len(parts)} parts: {customers:,} customers → {cfg.output_path}")


if __name__ == "__main__":
    main()
