"""The Python API for notebooks and jobs: the same runs as the `churnwatch` command, without Hydra's CLI.

    from churnwatch import Scorer, compose, load_model, train

    run = train(compose("train", ["model=gru", "trainer.max_epochs=3"]))
    scores = Scorer(run.model_path).score(events_df, as_of="2024-11-01")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from churnwatch.config.compose import compose
from churnwatch.runs import train as training


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run: its metrics (what metrics.json holds) and the files it wrote."""

    metrics: dict[str, Any]
    run_dir: Path
    model_path: Path | None
    """The exported model (None with `export=false`, for baselines and for cross-validation)."""
    report_path: Path | None
    checkpoint: Path | None
    """The best checkpoint of a network (None for baselines)."""

    @property
    def val(self) -> dict[str, float]:
        return dict(self.metrics.get("val", {}))

    @property
    def test(self) -> dict[str, float]:
        return dict(self.metrics.get("test", {}))


def train(cfg: DictConfig | Sequence[str] = ()) -> TrainedRun:
    """Train as `churnwatch train` does, from a composed config (`compose("train", [...])`) or from the
    overrides alone; the run dir is `cfg.paths.output_dir`."""
    if not isinstance(cfg, DictConfig):
        cfg = compose("train", cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = training.train(cfg)

    def path(key: str) -> Path | None:
        value = metrics.get(key)
        return Path(value) if value else None

    return TrainedRun(metrics, run_dir, path("model_path"), path("report"), path("best_checkpoint"))
