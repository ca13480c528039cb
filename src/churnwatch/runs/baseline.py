"""A baseline run: fit a tabular model on the training split's aggregates, calibrate and threshold it on
validation, test it, explain it, and write the run dir as a network run does (metrics.json, predictions,
insights, feature importance and, with `export: true`, model.pt)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from sklearn.base import BaseEstimator

from churnwatch.artifact.export import export_tabular
from churnwatch.artifact.model_file import TabularProbabilityModel, tabular_attribution
from churnwatch.explain.drivers import IndicatorCatalogue, sum_by_owner
from churnwatch.explain.importance import importance_table, plot_importance
from churnwatch.explain.insights import write_insights
from churnwatch.explain.segments import Segments
from churnwatch.features.aggregates import AggregateTable
from churnwatch.io.signing import load_signing_key
from churnwatch.models.calibration import Calibrator, expected_calibration_error
from churnwatch.models.metrics import evaluate
from churnwatch.models.scripted import NotScriptable, script_estimator
from churnwatch.models.tabular import build_estimator, contributions, fit_estimator
from churnwatch.models.thresholds import ThresholdRule, choose_operating_point
from churnwatch.pipeline.datamodule import ChurnDataModule
from churnwatch.runs.offers import fit_offers
from churnwatch.runs.predictions import prediction_table
from churnwatch.runs.record import (
    RunRecord,
    calibration_method,
    model_facts,
    record_run,
    threshold_config,
    write_run,
)
from churnwatch.runs.trackers import instantiate_loggers, log_artifacts, log_run

log = logging.getLogger(__name__)


def train_tabular(cfg: DictConfig) -> dict[str, Any]:
    """Fit a baseline on the training split's aggregates; threshold on validation; metrics.json, feature
    importance (feature_importance.csv / .png) and (`export: true`) model.pt in the run dir; config,
    metrics and files to the experiment trackers of `cfg.logger`, as a network run has them. A rich
    progress bar follows its steps (a network's is Lightning's; `trainer.enable_progress_bar=false` hides
    both)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not cfg.trainer.get("enable_progress_bar", True),
    ) as bar:
        task = bar.add_task("baseline", total=len(BASELINE_STEPS))

        def step(name: str) -> None:
            done = BASELINE_STEPS.index(name)
            bar.update(task, completed=done, description=f"{cfg.model.get('estimator')}: {name}")

        metrics = _train_tabular(cfg, step)
        bar.update(task, completed=len(BASELINE_STEPS))
    return metrics


BASELINE_STEPS = ("fit", "calibrate and test", "insights", "feature importance", "offers", "write the run")


def _exported_form(
    cfg: DictConfig,
    estimator: BaseEstimator,
    name: str,
    train: AggregateTable,
    calibrator: Calibrator,
    record: RunRecord,
) -> TabularProbabilityModel | None:
    """What model.pt runs (`export: true`): the estimator scripted, its calibration, and the training means
    the drivers occlude the aggregates to; None, and why in `record.export_skipped`, for an estimator
    setting without a TorchScript form (BTYD fitted on the scored rows)."""
    if not cfg.get("export"):
        return None
    try:
        scripted = script_estimator(estimator, name, train.names)
    except NotScriptable as exc:
        record.export_skipped = str(exc)
        log.warning("no model.pt: %s", exc)
        return None
    return TabularProbabilityModel(scripted, calibrator, train.values.mean(axis=0, dtype=np.float64))


def _train_tabular(cfg: DictConfig, step: Callable[[str], None]) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers = instantiate_loggers(cfg)  # before training: a missing tracker package fails here
    signing_key = load_signing_key(cfg.get("signing_key") if cfg.get("export") else None)  # a bad key too
    log.info("run dir: %s", run_dir)
    dm = ChurnDataModule(cfg.data)
    dm.setup("fit")
    data = dm.data
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    name = model_cfg["estimator"]
    train = data.train.aggregates
    estimator = build_estimator(name, model_cfg.get("params"), train, int(cfg.seed))
    step("fit")
    t0 = time.perf_counter()
    labels = data.train.snaps.label.astype(int)
    fit_estimator(estimator, name, train.values, labels, train, data.train.seqs.weight)
    timings = {"train_seconds": time.perf_counter() - t0}
    step("calibrate and test")
    val_raw = estimator.predict_proba(data.val.aggregates.values)[:, 1]
    calibrator = Calibrator.fit(calibration_method(cfg), val_raw, data.val.snaps.label)
    val_probs = calibrator(val_raw)
    op = choose_operating_point(
        val_probs, data.val.snaps.label, ThresholdRule.from_config(threshold_config(cfg, data))
    )
    train_probs = calibrator(estimator.predict_proba(train.values)[:, 1])
    metrics: dict[str, Any] = {
        "train": evaluate(train_probs, data.train.snaps.label, op.threshold, "train"),
        "val": evaluate(val_probs, data.val.snaps.label, op.threshold, "val"),
    }
    predictions = {"val": (val_raw, val_probs)}
    if cfg.get("test") and data.test is not None:
        t0 = time.perf_counter()
        test_raw = estimator.predict_proba(data.test.aggregates.values)[:, 1]
        score_seconds = time.perf_counter() - t0
        predictions["test"] = (test_raw, calibrator(test_raw))
        metrics["test"] = evaluate(predictions["test"][1], data.test.snaps.label, op.threshold, "test")
        timings["scoring_customers_per_s"] = len(test_raw) / max(score_seconds, 1e-9)
    for stage, (raw, _) in predictions.items():
        metrics[stage][f"{stage}/calibration_error_raw"] = expected_calibration_error(
            raw, getattr(data, stage).snaps.label
        )
    record = record_run(cfg, data, metrics, op, calibrator, predictions)
    model = _exported_form(cfg, estimator, name, train, calibrator, record)
    segments = Segments.fit(train, int(cfg.seed))
    center = None
    step("insights")
    if cfg.get("insights", {}).get("enabled", True):
        stage = "test" if "test" in predictions else "val"
        split = getattr(data, stage)
        catalogue = IndicatorCatalogue.from_config(cfg.data.get("indicators"))
        owner = catalogue.name_owner(split.aggregates.names, "aggregates")
        scores = sum_by_owner(
            contributions(estimator, name, split.aggregates.values, train.values), owner, len(catalogue.names)
        )
        record.insights = write_insights(
            run_dir,
            data,
            data_cfg=cfg.data,
            stage=stage,
            probs=predictions[stage][1],
            scores=scores,
            catalogue=catalogue,
            segments=segments,
        )
        if model is not None:  # scoring's drivers are the model's occlusion, centred on this split's mean
            occluded = tabular_attribution(model, split.aggregates.values)
            center = sum_by_owner(occluded, owner, len(catalogue.names)).mean(axis=0).tolist()
    step("feature importance")
    importance = importance_table(
        estimator, train, data.val.aggregates.values, data.val.snaps.label.astype(int), int(cfg.seed)
    )
    importance.to_csv(run_dir / "feature_importance.csv", index=False)
    plot_importance(importance, run_dir / "feature_importance.png", f"{name}: permutation importance")
    step("offers")
    offers, record.recommender = fit_offers(cfg, data, op, predictions)
    step("write the run")
    record.n_features = len(train.names)
    if model is not None:
        calibrated = {stage: probs for stage, (_, probs) in predictions.items()}
        exported = export_tabular(
            model,
            run_dir / "model.pt",
            estimator=name,
            data=dm.hparams["data"],
            data_state=dm.state_dict(),
            op=op,
            calibrator=calibrator,
            facts=model_facts(cfg, data, record, calibrated, segments, center),
            signing_key=signing_key,
            offers=offers,
        )
        record.model_path = str(exported)
    table = prediction_table({stage: getattr(data, stage) for stage in predictions}, predictions, data.log)
    write_run(run_dir, record, timings, table, report=bool(cfg.get("report", True)))
    metrics = record.to_json()
    log_run(loggers, cfg, metrics)
    log_artifacts(loggers, run_dir)
    return metrics
