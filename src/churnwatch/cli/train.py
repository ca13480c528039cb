"""`churnwatch train [model=lstm|gru|transformer|logreg|...] [trainer=cpu|gpu|ddp] [data=...] [...]`"""

from __future__ import annotations

from omegaconf import DictConfig

from churnwatch.cli.app import command


@command("train")
def main(cfg: DictConfig) -> float | None:
    """Train a model (a network or a baseline): fit, test, metrics.json, model.pt and report.html."""
    from churnwatch.runs.train import train

    metrics = train(cfg)
    return metrics["val"].get(cfg.optimized_metric)  # what a sweeper (Optuna) maximises


if __name__ == "__main__":  # Lightning's DDP launcher starts each worker process by running this file
    main()
