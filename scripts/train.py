"""Train a churn model: python scripts/train.py [model=lstm|gru|transformer] [trainer=cpu|gpu|ddp] [...]"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from churnwatch.cli import one_line_errors
from churnwatch.training import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics["val"].get(cfg.optimized_metric)  # what a sweeper (Optuna) maximises


if __name__ == "__main__":
    main()
