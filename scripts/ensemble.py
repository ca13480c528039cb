"""Ensemble finished runs: python scripts/ensemble.py members=[RUN_DIR,RUN_DIR,...]"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from churnwatch.ensemble import train_ensemble
from churnwatch.training import print_metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(cfg.paths.output_dir)
    metrics = train_ensemble(
        list(cfg.members),
        out_dir,
        OmegaConf.to_container(cfg.thresholds, resolve=True),
        bool(cfg.calibrate),
        bool(cfg.export),
    )
    print_metrics(metrics, out_dir)
    print("weights:", ", ".join(f"{k} {v:.3f}" for k, v in metrics["weights"].items()))
    if "export_skipped" in metrics:
        print("not exported:", metrics["export_skipped"])
    return metrics["val"].get("val/auroc")


if __name__ == "__main__":
    main()
