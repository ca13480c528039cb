"""One training run: data → fit → test the best checkpoint → metrics.json → model.pt, all in the run dir.

metrics.json holds only what the seeded run determines, so two seeded CPU runs write identical files;
wall-clock figures go to timings.json beside it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

from churnwatch.artifact.export import export_checkpoint
from churnwatch.explain.drivers import IndicatorCatalogue, explain_sequences, owners
from churnwatch.explain.insights import write_insights
from churnwatch.explain.segments import Segments
from churnwatch.io.signing import load_signing_key
from churnwatch.models.module import ChurnModule
from churnwatch.models.thresholds import Operating
from churnwatch.pipeline.datamodule import ChurnDataModule
from churnwatch.runs.baseline import train_tabular
from churnwatch.runs.offers import fit_offers
from churnwatch.runs.predictions import prediction_table
from churnwatch.runs.pretrain import pretrain_encoder
from churnwatch.runs.record import (
    Predictions,
    calibration_method,
    model_facts,
    print_metrics,
    record_run,
    refuse_finished_run,
    threshold_config,
    write_run,
)
from churnwatch.runs.trackers import instantiate_all, instantiate_loggers, log_artifacts
from churnwatch.runtime.hardware import (
    accelerator_device,
    bf16_kernels,
    fit_threads,
    maybe_compile,
    training_precision,
)

log = logging.getLogger(__name__)


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
    record = record_run(cfg, dm.data, metrics, op, model.calibrator, predictions)
    record.best_checkpoint = best_path
    record.pretrained_encoder = pretrained
    if trainer.is_global_zero:
        segments = Segments.fit(dm.data.train.aggregates, int(cfg.seed))
        center = None
        if cfg.get("insights", {}).get("enabled", True):
            record.insights, timings["explain_customers_per_s"] = network_insights(
                cfg, dm, model, predictions, segments
            )
            center = record.insights.get("center")
        offers, record.recommender = fit_offers(cfg, dm.data, op, predictions)
        if cfg.get("export") and best_path:
            facts = model_facts(cfg, dm.data, record, model.predictions, segments, center)
            exported = export_checkpoint(
                best_path, run_dir / "model.pt", facts, signing_key=signing_key, offers=offers
            )
            record.model_path = str(exported)
        splits = {stage: getattr(dm.data, stage) for stage in predictions}
        table = prediction_table(splits, predictions, dm.data.log)
        write_run(run_dir, record, timings, table, report=bool(cfg.get("report", True)))
        log_artifacts(trainer.loggers, run_dir)
        print_metrics(record.to_json(), run_dir)
    return record.to_json()


def network_insights(
    cfg: DictConfig,
    dm: ChurnDataModule,
    model: ChurnModule,
    predictions: Predictions,
    segments: Segments,
) -> tuple[dict[str, Any], float]:
    """Drivers (integrated gradients), importance, match rate and segments on the test split, and the
    customers explained per second."""
    stage = "test" if "test" in predictions else "val"
    data, split = dm.data, getattr(dm.data, stage)
    catalogue = IndicatorCatalogue.from_config(cfg.data.get("indicators"))
    agg_names = split.aggregates.names if dm.cfg.get("use_aggregates") else []
    owner = owners(catalogue, data.log, split.snaps, data.encoder, agg_names)
    net = model.net.eval()
    t0 = time.perf_counter()
    scores = explain_sequences(
        net,
        split.seqs,
        owner,
        data.featurizer.scale(split.aggregates) if agg_names else None,
        batch_size=int(cfg.insights.batch_size),
        steps=int(cfg.insights.steps),
        device=next(net.parameters()).device,
    )
    seconds = time.perf_counter() - t0
    out = write_insights(
        cfg.paths.output_dir,
        data,
        data_cfg=cfg.data,
        stage=stage,
        probs=predictions[stage][1],
        scores=scores,
        catalogue=catalogue,
        segments=segments,
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
