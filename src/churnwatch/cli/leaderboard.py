"""`churnwatch leaderboard [experiment=E] [models=[...]] [seeds=[...]] [ensembles=[[a,b]]] [...]`"""

from __future__ import annotations

from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.markdown import Markdown

from churnwatch.cli.app import command


@command("leaderboard")
def main(cfg: DictConfig) -> None:
    """Train and rank models × seeds on one dataset: leaderboard.md, leaderboard.csv."""
    from churnwatch.runs.leaderboard import OWN_KEYS, passthrough, run_leaderboard

    out_dir = Path(cfg.paths.output_dir)
    overrides = passthrough(HydraConfig.get().overrides.task, OWN_KEYS)
    run_leaderboard(cfg, lambda o: compose("train", overrides=o), out_dir, overrides)
    Console().print(Markdown((out_dir / "leaderboard.md").read_text()))
    Console().print(f"→ {out_dir / 'leaderboard.md'}, {out_dir / 'leaderboard.csv'}")


if __name__ == "__main__":
    main()
