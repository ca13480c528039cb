"""One training run: data → fit → test the best checkpoint → metrics.json → model.pt, all in the run dir.

metrics.json holds only what the seeded run determines, so two seeded CPU runs write identical files;
wall-clock figures go to timings.json beside it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from churnwatch.calibration import Calibrator, calibration_report
from churnwatch.data.datamodule import ChurnDataModule
from churnwatch.data.dataset import ChurnData
from churnwatch.drivers import IndicatorCatalogue, explain_sequences
from churnwatch.evaluation import AT_THRESHOLD, recency_auroc
from churnwatch.hardware import (
    accelerator_device,
    bf16_kernels,
    fit_threads,
    maybe_compile,
    training_precision,
)
from churnwatch.insights import Segments, owners, write_insights
from churnwatch.models.module import ChurnModule
from churnwatch.models.thresholds import Operating, tier_table
from churnwatch.predictions import write_predictions
from churnwatch.report import REPORT_FILE, write_report
from churnwatch.signing import load_signing_key
from churnwatch.trackers import instantiate_all, instantiate_loggers, log_artifacts

log = logging.getLogger(__name__)
TIMINGS_FILE = "timings.json"
TIMING_KEYS = ("train_seconds", "scoring_customers_per_s", "explain_customers_per_s")
METRIC_ORDER = (
    "auroc",
    "auroc_recency_only",
    "average_precision",
    "lift_top10",
    "capture_top10",
    *AT_THRESHOLD,
    "brier",
    "calibration_error",
    "threshold",
    "positive_rate",
    "loss",
)


def build_module(cfg: DictConfig, dm: ChurnDataModule) -> ChurnModule:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    return ChurnModule(
        features=dm.feature_spec(),
        net=model_cfg["net"],
        loss=model_cfg.get("loss"),
        optimizer=model_cfg.get("optimizer"),
        scheduler=model_cfg.get("scheduler"),
        thresholds=threshold_config(cfg, dm.data),
        pos_rate=dm.train_positive_rate,
        calibration=calibration_method(cfg),
        nonfinite=model_cfg.get("nonfinite"),
        tte=model_cfg.get("tte"),
    )


def threshold_config(cfg: DictConfig, data: ChurnData) -> dict[str, Any]:
    """The alert rule, with `population` (customers per scoring run, for top_k) defaulting to the test
    cutoff's population: the latest snapshot is what a scoring run looks like."""
    rule = OmegaConf.to_container(cfg.thresholds, resolve=True) if cfg.get("thresholds") else {}
    if rule.get("population") is None:
        rule["population"] = len(data.test) if data.test is not None else len(data.val)
    return rule


def calibration_method(cfg: DictConfig) -> str:
    """`calibration: auto` is temperature scaling for networks and Platt scaling for baselines."""
    method = str(cfg.get("calibration") or "auto")
    if method == "auto":
        return "platt" if cfg.model.get("kind") == "tabular" else "temperature"
    return method


def model_name(cfg: DictConfig) -> str:
    """The model's name (`model.name`; older configs: the estimator or encoder)."""
    model = cfg.model
    return str(model.get("name") or model.get("estimator") or model.net.encoder)


def record_run(
    cfg: DictConfig,
    data: ChurnData,
    metrics: dict[str, Any],
    op: Operating,
    calibrator: Calibrator,
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """What every run's metrics.json carries besides its metrics, networks and baselines alike (the
    leaderboard, ensembles, curves and the report read these keys). `predictions` maps a stage to its
    (raw, calibrated) probabilities in split order."""
    if "test" in metrics:
        test = data.test
        metrics["test"]["test/auroc_recency_only"] = recency_auroc(test.aggregates, test.snaps.label)
    metrics["threshold"] = float(op.threshold)
    metrics["tier_cuts"] = {"high": float(op.high_cut), "medium": float(op.medium_cut)}
    metrics["alert_rule"] = op.rule
    metrics["calibration"] = calibrator.state()
    metrics["tiers"] = {}
    for stage, (raw, calibrated) in predictions.items():
        labels = getattr(data, stage).snaps.label
        metrics["calibration"][stage] = calibration_report(raw, calibrated, labels)
        # validation: the expected figures (cut-offs fitted there); test: realised, as a scoring run would
        metrics["tiers"][stage] = tier_table(calibrated, labels, op, by_capacity=stage == "test")
    metrics["sizes"] = data.sizes()
    metrics["model"] = model_name(cfg)
    metrics["run_dir"] = str(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # one writer under DDP
        data.write_report(cfg.paths.output_dir)


def write_run_summary(cfg: DictConfig, metrics: dict[str, Any], timings: Mapping[str, float]) -> None:
    """timings.json and metrics.json, then (`report: true`) the run's HTML report, which metrics.json links.
    metrics.json comes last: its presence marks a finished run (the leaderboard reuses such run dirs)."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("report", True):
        metrics["report"] = str(run_dir / REPORT_FILE)
    write_timings(run_dir, timings)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if cfg.get("report", True):
        log.info("report: %s", write_report(run_dir))


def write_timings(run_dir: str | Path, timings: Mapping[str, float]) -> None:
    (Path(run_dir) / TIMINGS_FILE).write_text(json.dumps(dict(timings), indent=2))


def read_timings(run_dir: str | Path) -> dict[str, float]:
    """A run's wall-clock figures: timings.json, or for a run written before it existed, the same keys in
    its metrics.json; {} when neither has them."""
    run_dir = Path(run_dir)
    if (run_dir / TIMINGS_FILE).exists():
        return json.loads((run_dir / TIMINGS_FILE).read_text())
    metrics = run_dir / "metrics.json"
    saved = json.loads(metrics.read_text()) if metrics.exists() else {}
    return {k: saved[k] for k in TIMING_KEYS if k in saved}


def refuse_finished_run(cfg: DictConfig) -> None:
    """A run dir whose metrics.json exists holds a finished run: training into it again (by mistake, or to
    resume it) would replace its results, so that takes `overwrite=true`. A run killed before the end has
    no metrics.json and resumes with `ckpt_path=last`."""
    done = Path(cfg.paths.output_dir) / "metrics.json"
    if done.exists() and not cfg.get("overwrite"):
        raise FileExistsError(
            f"{done} exists: {done.parent} holds a finished run; pass overwrite=true to train into it again"
        )


def check_resume(ckpt_path: str | None, callbacks: list[Any]) -> None:
    """`ckpt_path=last` with no last checkpoint: Lightning only warns and trains from scratch, so a resume
    pointed at the wrong run dir would silently start over. Refuse instead."""
    if ckpt_path != "last":
        return
    dirs = [Path(c.dirpath) for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    if not any(any(d.glob("last*.ckpt")) for d in dirs):
        where = ", ".join(map(str, dirs)) or "(no ModelCheckpoint callback configured)"
        raise FileNotFoundError(
            f"ckpt_path=last: no last*.ckpt in {where}; point hydra.run.dir (or paths.output_dir) at the "
            "interrupted run's dir, or leave ckpt_path unset to start afresh"
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run training as configured; returns the metrics (validation of the best epoch and test)."""
    refuse_finished_run(cfg)
    if cfg.get("cv") and cfg.cv.get("folds"):
        return train_cv(cfg)
    if cfg.model.get("kind") == "tabular":
        from churnwatch.models.tabular import train_tabular

        metrics = train_tabular(cfg)
        print_metrics(metrics, Path(cfg.paths.output_dir))
        return metrics
    run_dir = Path(cfg.paths.output_dir)
    # read now, so a bad key fails before training rather than at the export after it
    signing_key = load_signing_key(cfg.get("signing_key") if cfg.get("export") else None)
    fit_threads()
    L.seed_everything(int(cfg.seed), workers=True)
    if cfg.trainer.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    dm = ChurnDataModule(cfg.data)
    dm.setup("fit")
    model = build_module(cfg, dm)
    pretrained = None
    if cfg.get("pretrain") and cfg.pretrain.get("objective", "none") != "none":
        from churnwatch.pretraining import pretrain_encoder

        pretrained = str(pretrain_encoder(cfg, dm.data, model.net))
    device = accelerator_device(str(cfg.trainer.get("accelerator", "cpu")))
    if cfg.model.get("compile"):
        model.net = maybe_compile(model.net, device)
    loggers = instantiate_loggers(cfg)
    callbacks = [  # with logger=none there is nothing to log learning rates to (Lightning would refuse)
        c for c in instantiate_all(cfg.get("callbacks")) if loggers or not isinstance(c, LearningRateMonitor)
    ]
    check_resume(cfg.get("ckpt_path"), callbacks)
    precision = training_precision(cfg.trainer.get("precision", "32-true"), device)
    bf16 = "bf16" in str(precision)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision
    )
    # log at least once per epoch on small data (Lightning warns when an epoch is shorter than the interval)
    trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, dm.train_batches(trainer.world_size)))
    if trainer.is_global_zero:
        log.info("run dir: %s", run_dir)
    t0 = time.perf_counter()
    with bf16_kernels(device, bf16):
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    timings = {"train_seconds": time.perf_counter() - t0}
    # read before validate/test load the best checkpoint, which holds the count as of its own epoch
    skipping = model.nonfinite["action"] == "skip"
    train_metrics = {"train/skipped_batches": model.skipped_batches} if skipping else {}
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    # Validation metrics of the best checkpoint (this pass also restores its threshold and tiers).
    with bf16_kernels(device, bf16):
        trainer.validate(model, datamodule=dm, ckpt_path=best_path or None, verbose=False)
    metrics: dict[str, Any] = {
        "train": train_metrics,
        "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
    }
    if cfg.get("test"):
        t0 = time.perf_counter()
        with bf16_kernels(device, bf16):
            trainer.test(model, datamodule=dm, ckpt_path=best_path or None, verbose=False)
        test_seconds = time.perf_counter() - t0
        metrics["test"] = dict(model.last_test)
        timings["scoring_customers_per_s"] = len(dm.data.test) / max(test_seconds, 1e-9)
    op = Operating(float(model.threshold), *map(float, model.tier_cuts.tolist()), dict(asdict(model.rule)))
    predictions = {
        stage: (model.raw_predictions[stage], model.predictions[stage])
        for stage in ("val", "test")
        if stage in model.predictions
    }
    record_run(cfg, dm.data, metrics, op, model.calibrator, predictions)
    metrics["best_checkpoint"] = best_path
    if pretrained:
        metrics["pretrained_encoder"] = pretrained
    if trainer.is_global_zero:
        splits = {stage: getattr(dm.data, stage) for stage in predictions}
        write_predictions(run_dir, splits, predictions, dm.data.log)
        segments = Segments.fit(dm.data.train.aggregates, int(cfg.seed))
        if cfg.get("insights", {}).get("enabled", True):
            metrics["insights"], timings["explain_customers_per_s"] = network_insights(
                cfg, dm, model, predictions, segments
            )
        if cfg.get("export") and best_path:
            from churnwatch.export import export_checkpoint, run_record

            center = metrics.get("insights", {}).get("center")
            record = run_record(cfg, dm.data, metrics, op, model.predictions, segments, center)
            metrics["model_path"] = str(
                export_checkpoint(best_path, run_dir / "model.pt", signing_key=signing_key, **record)
            )
        write_run_summary(cfg, metrics, timings)
        log_artifacts(trainer.loggers, run_dir)
        print_metrics(metrics, run_dir)
    return metrics


def network_insights(
    cfg: DictConfig,
    dm: ChurnDataModule,
    model: ChurnModule,
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    segments: Segments,
) -> tuple[dict[str, Any], float]:
    """Drivers (integrated gradients), importance, match rate and segments on the test split, and the
    customers explained per second."""
    stage = "test" if "test" in predictions else "val"
    data, split = dm.data, getattr(dm.data, stage)
    catalogue = IndicatorCatalogue.from_config(cfg.data.get("indicators"))
    agg_names = split.aggregates.names if dm.cfg.get("use_aggregates") else []
    event_owner, static_owner, agg_owner = owners(catalogue, data.log, split.snaps, data.encoder, agg_names)
    net = model.net.eval()
    t0 = time.perf_counter()
    scores = explain_sequences(
        net,
        split.seqs,
        event_owner,
        static_owner,
        agg_owner,
        data.featurizer.scale(split.aggregates) if agg_names else None,
        len(catalogue.names),
        int(cfg.insights.batch_size),
        int(cfg.insights.steps),
        next(net.parameters()).device,
    )
    seconds = time.perf_counter() - t0
    out = write_insights(
        cfg.paths.output_dir, data, cfg.data, stage, predictions[stage][1], scores, catalogue, segments
    )
    return out, len(split) / max(seconds, 1e-9)


def train_cv(cfg: DictConfig) -> dict[str, Any]:
    """k-fold cross-validation by customer: one run per fold under <run dir>/fold_<i>/, then mean ± std."""
    folds = int(cfg.cv.folds)
    run_dir = Path(cfg.paths.output_dir)
    per_fold = []
    for fold in range(folds):
        fold_cfg = copy.deepcopy(cfg)
        with open_dict(fold_cfg):
            fold_cfg.cv.folds = None
            fold_cfg.data.folds = folds
            fold_cfg.data.fold = fold
            fold_cfg.paths.output_dir = str(run_dir / f"fold_{fold}")
        Path(fold_cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        log.info("cross-validation fold %d/%d", fold + 1, folds)
        per_fold.append(train(fold_cfg))
    summary: dict[str, Any] = {"folds": folds, "per_fold": per_fold}
    for stage in ("val", "test"):
        keys = sorted(set.intersection(*(set(m.get(stage, {})) for m in per_fold)))
        values = {k: np.array([m[stage][k] for m in per_fold], dtype=np.float64) for k in keys}
        summary[stage] = {
            k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if folds > 1 else 0.0}
            for k, v in values.items()
        }
    (run_dir / "cv_metrics.json").write_text(json.dumps(summary, indent=2))
    auroc = summary["val"].get("val/auroc", {})
    Console().print(
        f"{folds}-fold CV: val AUROC {auroc.get('mean', float('nan')):.4f} ± "
        f"{auroc.get('std', float('nan')):.4f} → {run_dir / 'cv_metrics.json'}"
    )
    return {
        "val": {k: v["mean"] for k, v in summary["val"].items()},
        "test": {k: v["mean"] for k, v in summary["test"].items()},
        "cv": summary,
    }


def print_metrics(metrics: dict[str, Any], run_dir: Path) -> None:
    table = Table(title="churnwatch metrics")
    table.add_column("metric")
    for stage in ("val", "test"):
        if stage in metrics:
            table.add_column(stage, justify="right")
    for name in METRIC_ORDER:
        row = [name]
        for stage in ("val", "test"):
            if stage in metrics:
                value = metrics[stage].get(f"{stage}/{name}")
                row.append("" if value is None else f"{value:.4f}")
        if any(row[1:]):
            table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"run dir: {run_dir}")
