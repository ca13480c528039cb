"""`churnwatch merge-scores model_path=M parts='out/part-*.parquet' output_path=O`"""

from __future__ import annotations

import glob

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from churnwatch.cli.app import command


@command("merge_scores")
def main(cfg: DictConfig) -> None:
    """Rank the union of shard parts (churnwatch score num_shards=N shard_index=i) as one run."""
    from churnwatch.io.signing import Verification
    from churnwatch.scoring.shards import merge_shards

    verify = Verification.from_config(cfg.verify_key, bool(cfg.require_signature))
    parts = cfg.parts if not isinstance(cfg.parts, str) else sorted(glob.glob(cfg.parts))
    customers = merge_shards(
        cfg.model_path,
        list(parts),
        cfg.output_path,
        playbook=OmegaConf.to_container(cfg.playbook, resolve=True),
        rank_by=str(cfg.rank_by),
        overwrite=bool(cfg.overwrite),
        block_rows=int(cfg.block_rows),
        verify=verify,
    )
    Console().print(f"merged {len(parts)} parts: {customers:,} customers → {cfg.output_path}")


if __name__ == "__main__":
    main()
