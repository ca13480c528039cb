"""Experiment trackers (`logger=csv|mlflow|wandb|tensorboard|none`): the Lightning loggers of `cfg.logger`,
and what a finished run hands them.

A network run logs its curves through the Lightning Trainer; a baseline has no Trainer, so `log_run` gives
it the same record (the resolved config as hyperparameters, the final metrics of metrics.json) and the
two kinds of run sit side by side in one tracker. `log_artifacts` then uploads the run's files to the
trackers that keep files (MLflow, W&B; CSV and TensorBoard already write into the run dir) and closes
every logger. Both only act on rank zero, so a DDP run is recorded once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

# What a run dir holds that is worth keeping next to its metrics (those present are uploaded; the
# checkpoints stay out: model.pt is the artifact that scoring loads, and they can be large).
ARTIFACT_FILES = (
    "metrics.json",
    "timings.json",
    "report.html",
    "model.pt",
    "feature_importance.csv",
    "drivers.parquet",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
)
ARTIFACT_GLOBS = ("*.png", "report/*.png")
STAGES = ("train", "val", "test")
WANDB_ARTIFACT_TYPE = "churnwatch-run"


def instantiate_all(node: DictConfig | Mapping[str, Any] | None) -> list[Any]:
    """Every `_target_` entry of a config group, in order; entries set to null are switched off. Used for
    the loggers here and for the callbacks in training."""
    return [instantiate(c) for c in (node or {}).values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    """The loggers of `cfg.logger` (none for `logger=none`). Creating one does not start a tracker run
    (that happens on first use), but a missing package fails here, before any training."""
    return instantiate_all(cfg.get("logger"))


def run_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a run's metrics.json that a tracker can chart: every `train/`, `val/` and `test/`
    metric, the top-level scalars (threshold, n_features) and the tier cut-offs (`tier_cuts/high`)."""
    out: dict[str, float] = {}
    for stage in STAGES:
        out.update({k: float(v) for k, v in (metrics.get(stage) or {}).items() if _is_number(v)})
    out.update({k: float(v) for k, v in metrics.items() if k not in STAGES and _is_number(v)})
    out.update({f"tier_cuts/{k}": float(v) for k, v in (metrics.get("tier_cuts") or {}).items()})
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


@rank_zero_only
def log_run(loggers: Sequence[Logger], cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    """Hyperparameters (the resolved config; the loggers that need flat keys flatten it, e.g.
    `model/params/C`) and final metrics, for a run that had no Trainer to log them."""
    if not loggers:
        return
    params = OmegaConf.to_container(cfg, resolve=True)
    scalars = run_scalars(metrics)
    for logger in loggers:
        logger.log_hyperparams(params)
        logger.log_metrics(scalars, step=0)
        logger.save()


def run_files(run_dir: str | Path) -> list[Path]:
    """The run dir's files to upload as artifacts (ARTIFACT_FILES and ARTIFACT_GLOBS that exist)."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in ARTIFACT_FILES]
    files += [p for pattern in ARTIFACT_GLOBS for p in sorted(run_dir.glob(pattern))]
    return [p for p in files if p.is_file()]


@rank_zero_only
def log_artifacts(loggers: Sequence[Logger], run_dir: str | Path) -> None:
    """Upload the run's files (`run_files`) to MLflow (into the run's artifacts, keeping the run dir's
    layout) and W&B (one artifact of type `churnwatch-run`), then finalize every logger: the MLflow run
    ends FINISHED, the W&B run is finished (so the next run of a sweep starts its own)."""
    run_dir = Path(run_dir)
    files = run_files(run_dir) if any(isinstance(lg, MLFlowLogger | WandbLogger) for lg in loggers) else []
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            _mlflow_upload(logger, run_dir, files)
        elif isinstance(logger, WandbLogger):
            _wandb_upload(logger, run_dir, files)
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def _mlflow_upload(logger: MLFlowLogger, run_dir: Path, files: Iterable[Path]) -> None:
    for path in files:
        folder = path.parent.relative_to(run_dir).as_posix()
        logger.experiment.log_artifact(
            logger.run_id, str(path), artifact_path=None if folder == "." else folder
        )


def _wandb_upload(logger: WandbLogger, run_dir: Path, files: Sequence[Path]) -> None:
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(
        f"churnwatch-{run.id}", type=WANDB_ARTIFACT_TYPE, metadata={"run_dir": str(run_dir)}
    )
    for path in files:
        # immutable: referenced in place instead of copied to W&B's staging dir (the files are final)
        artifact.add_file(str(path), name=path.relative_to(run_dir).as_posix(), policy="immutable")
    if files:
        run.log_artifact(artifact)
