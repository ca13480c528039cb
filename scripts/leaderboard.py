"""Train and rank models on one dataset: python scripts/leaderboard.py experiment=E models=[...]"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.markdown import Markdown

from churnwatch.leaderboard import OWN_KEYS, passthrough, run_leaderboard


@hydra.main(version_base="1.3", config_path="../conf", config_name="leaderboard")
def main(cfg: DictConfig) -> None:
    out_dir = Path(cfg.paths.output_dir)
    overrides = passthrough(HydraConfig.get().overrides.task, OWN_KEYS)
    run_leaderboard(cfg, lambda o: compose("train", overrides=o), out_dir, overrides)
    Console().print(Markdown((out_dir / "leaderboard.md").read_text()))
    Console().print(f"→ {out_dir / 'leaderboard.md'}, {out_dir / 'leaderboard.csv'}")


if __name__ == "__main__":
    main()
