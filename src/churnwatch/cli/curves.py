"""`churnwatch curves kind=learning|validation model=M [param=... values=[...]] [train overrides]`"""

from __future__ import annotations

from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from churnwatch.cli.app import command


@command("curves")
def main(cfg: DictConfig) -> None:
    """Learning curves (metric vs training customers) or validation curves (metric vs one setting)."""
    from churnwatch.runs.curves import OWN_KEYS, run_curve
    from churnwatch.runs.leaderboard import passthrough

    out_dir = Path(cfg.paths.output_dir)
    overrides = passthrough(HydraConfig.get().overrides.task, OWN_KEYS)
    runs = run_curve(cfg, lambda o: compose("train", overrides=o), out_dir, overrides)
    columns = ("value", "seed", "train_customers", f"val/{cfg.metric}", f"test/{cfg.metric}")
    console = Console()
    console.print(runs[[c for c in columns if c in runs]].to_string(index=False))
    console.print(f"→ {out_dir / 'curve.csv'}, {out_dir / 'curve.png'}")


if __name__ == "__main__":
    main()
