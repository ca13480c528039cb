"""What every run writes beside its model, networks, baselines and ensembles alike: the metrics record, its
timings, the report, and the rule that a run dir with metrics.json holds a finished run."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from churnwatch.models.calibration import Calibrator, calibration_report
from churnwatch.models.metrics import AT_THRESHOLD, recency_auroc
from churnwatch.models.thresholds import Operating, tier_table
from churnwatch.pipeline.dataset import ChurnData
from churnwatch.runs.report import REPORT_FILE, write_report

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
