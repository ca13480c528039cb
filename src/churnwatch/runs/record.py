"""What every run writes beside its model, networks, baselines and ensembles alike: the run record
(metrics.json), its timings, predictions and report, and the rule that a run dir with metrics.json holds a
finished run."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from churnwatch.artifact.metadata import RunFacts
from churnwatch.explain.segments import Segments
from churnwatch.io.atomic import atomic_path
from churnwatch.models.calibration import Calibrator, calibration_report
from churnwatch.models.metrics import AT_THRESHOLD, recency_auroc
from churnwatch.models.thresholds import Operating, tier_table
from churnwatch.monitoring.drift import training_reference
from churnwatch.pipeline.dataset import ChurnData
from churnwatch.runs.predictions import write_predictions
from churnwatch.runs.report import REPORT_FILE, write_report

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
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
Predictions = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""A stage's (raw, calibrated) churn probabilities, in split order."""


@dataclass(kw_only=True)
class RunRecord:
    """A run's metrics.json, networks, baselines and ensembles alike: the leaderboard, ensembles, curves
    and the report read its keys. Only what the seeded run determines goes here (wall-clock figures go to
    timings.json), so two seeded CPU runs write identical files. Fields a run kind does not have stay None
    and are left out of the file; the field order is the file's key order."""

    train: dict[str, float] | None = None
    """Training-split metrics (a network: the batches skipped for a non-finite loss, if it skips them)."""
    val: dict[str, float]
    test: dict[str, float] | None = None
    threshold: float
    tier_cuts: dict[str, float]
    alert_rule: dict[str, Any] | None = None
    calibration: dict[str, Any]
    """The calibration's state (an ensemble: its method and each member's Platt slope and intercept) and,
    per stage, calibration_report's figures before and after it."""
    tiers: dict[str, list[dict[str, Any]]] | None = None
    """Per stage, tier_table's rows: validation the expected figures, test what scoring realised."""
    sizes: dict[str, Any] | None = None
    model: str
    members: list[str] | None = None
    """An ensemble's member run dirs."""
    weights: dict[str, float] | None = None
    """An ensemble's weight per member name."""
    run_dir: str
    best_checkpoint: str | None = None
    pretrained_encoder: str | None = None
    export_skipped: str | None = None
    """Why the run has no model.pt though export was asked for."""
    insights: dict[str, Any] | None = None
    recommender: dict[str, Any] | None = None
    """The offers' recommender, its settings and its backtest on the test horizon (runs/offers.py)."""
    n_features: int | None = None
    model_path: str | None = None
    report: str | None = None

    def to_json(self) -> dict[str, Any]:
        """metrics.json's object."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


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
    metrics: Mapping[str, dict[str, float]],
    op: Operating,
    calibrator: Calibrator,
    predictions: Predictions,
) -> RunRecord:
    """The record of a network or baseline run from its per-stage `metrics` ("train", "val" and, when
    tested, "test"), operating point, calibration and `predictions`; also writes data_report.json (what
    validation dropped) into the run dir."""
    test = metrics.get("test")
    if test is not None:
        test["test/auroc_recency_only"] = recency_auroc(data.test.aggregates, data.test.snaps.label)
    labels = {stage: getattr(data, stage).snaps.label for stage in predictions}
    record = RunRecord(
        train=metrics["train"],
        val=metrics["val"],
        test=test,
        threshold=float(op.threshold),
        tier_cuts={"high": float(op.high_cut), "medium": float(op.medium_cut)},
        alert_rule=op.rule,
        calibration={**calibrator.state(), **stage_calibration(predictions, labels)},
        tiers=stage_tiers(predictions, labels, op),
        sizes=data.sizes(),
        model=model_name(cfg),
        run_dir=str(cfg.paths.output_dir),
    )
    if rank_zero_only.rank == 0:  # one writer under DDP
        data.write_report(cfg.paths.output_dir)
    return record


def stage_calibration(
    predictions: Predictions, labels: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per stage: calibration error and log loss before and after calibration (the report's table)."""
    return {
        stage: calibration_report(raw, calibrated, labels[stage])
        for stage, (raw, calibrated) in predictions.items()
    }


def stage_tiers(
    predictions: Predictions, labels: Mapping[str, np.ndarray], op: Operating
) -> dict[str, list[dict[str, Any]]]:
    """Per stage, the tier table: on validation the expected figures (the cut-offs were fitted there), on
    test what a scoring run realised (capacity rules fill their tiers by rank, as scoring does)."""
    return {
        stage: tier_table(calibrated, labels[stage], op, by_capacity=stage == "test")
        for stage, (_, calibrated) in predictions.items()
    }


def model_facts(
    cfg: DictConfig,
    data: ChurnData,
    record: RunRecord,
    predictions: Mapping[str, np.ndarray],
    segments: Segments,
    center: list[float] | None,
) -> RunFacts:
    """What the run's model.pt carries about the run, networks and baselines alike: test metrics, config,
    the tiers expected from validation, segments, the monitoring reference (from the calibrated
    `predictions` per stage) and the drivers' centre (`center`, per indicator)."""
    cuts = (record.tier_cuts["high"], record.tier_cuts["medium"])
    return RunFacts(
        test_metrics=record.test or {},
        config=OmegaConf.to_container(cfg, resolve=True),
        expected_tiers=(record.tiers or {}).get("val") or [],
        segments=segments.state(),
        reference=training_reference(data, predictions, cuts),
        drivers={"center": center, "indicators": list(cfg.data.get("indicators") or {})},
    )


def write_run(
    run_dir: str | Path,
    record: RunRecord,
    timings: Mapping[str, float],
    predictions: pd.DataFrame,
    *,
    report: bool = True,
) -> Path:
    """Write a finished run's files, each replaced whole: timings.json, predictions.parquet, (`report`)
    report.html, which metrics.json links, and metrics.json last. Its presence marks a finished run (the
    leaderboard reuses such run dirs, `refuse_finished_run` keeps them), so a run that fails before it,
    in its report too, leaves none. Returns metrics.json's path."""
    run_dir = Path(run_dir)
    if report:
        record.report = str(run_dir / REPORT_FILE)
    write_timings(run_dir, timings)
    write_predictions(run_dir, predictions)
    metrics = record.to_json()
    if report:
        log.info("report: %s", write_report(run_dir, metrics))
    return write_json(run_dir / METRICS_FILE, metrics)


def write_timings(run_dir: str | Path, timings: Mapping[str, float]) -> Path:
    return write_json(Path(run_dir) / TIMINGS_FILE, dict(timings))


def write_json(path: Path, content: Any) -> Path:
    """`content` as indented JSON at `path`, replaced whole."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2))
    return path


def read_timings(run_dir: str | Path) -> dict[str, float]:
    """A run's wall-clock figures: timings.json, or for a run written before it existed, the same keys in
    its metrics.json; {} when neither has them."""
    run_dir = Path(run_dir)
    if (run_dir / TIMINGS_FILE).exists():
        return json.loads((run_dir / TIMINGS_FILE).read_text())
    metrics = run_dir / METRICS_FILE
    saved = json.loads(metrics.read_text()) if metrics.exists() else {}
    return {k: saved[k] for k in TIMING_KEYS if k in saved}


def refuse_finished_run(cfg: DictConfig) -> None:
    """A run dir whose metrics.json exists holds a finished run: training into it again (by mistake, or to
    resume it) would replace its results, so that takes `overwrite=true`. A run killed before the end has
    no metrics.json and resumes with `ckpt_path=last`."""
    done = Path(cfg.paths.output_dir) / METRICS_FILE
    if done.exists() and not cfg.get("overwrite"):
        raise FileExistsError(
            f"{done} exists: {done.parent} holds a finished run; pass overwrite=true to train into it again"
        )


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
