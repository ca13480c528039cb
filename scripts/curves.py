"""Learning / validation curves: python scripts/curves.py kind=learning|validation model=M [...]"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from churnwatch.curves import OWN_KEYS, run_curve
from churnwatch.leaderboard import passthrough


@hydra.main(version_base="1.3", config_path="../conf", config_name="curves")
def main(cfg: DictConfig) -> None:
    out_dir = Path(cfg.paths.output_dir)
    overrides = passthrough(HydraConfig.get().overrides.task, OWN_KEYS)
    runs = run_curve(cfg, lambda o: compose("train", overrides=o), out_dir, overrides)
    cols = [
        c
        for c in ("value", "seed", "train_customers", f"val/{cfg.metric}", f"test/{cfg.metric}")
        if c in runs
    ]
    print(runs[cols].to_string(index=False))
    print(f"→ {out_dir / 'curve.csv'}, {out_dir / 'curve.png'}")


if __name__ == "__main__":
    main()
