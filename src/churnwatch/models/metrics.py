"""One way to judge every model: the same torchmetrics for networks (per batch) and baselines (at once)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.regression import MeanSquaredError

from churnwatch.features.aggregates import AggregateTable

RANKING = ("auroc", "average_precision", "brier", "calibration_error")
AT_THRESHOLD = ("f1", "precision", "recall", "accuracy")
METRIC_NAMES = RANKING + AT_THRESHOLD
"""Every model, network or baseline, is reported with these, per stage (`test/auroc`, ...)."""


def ranking_metrics() -> MetricCollection:
    """Threshold-free metrics (brier = mean squared error of the probability)."""
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "average_precision": BinaryAveragePrecision(),
            "brier": MeanSquaredError(),
            "calibration_error": BinaryCalibrationError(n_bins=15, norm="l1"),
        }
    )


def threshold_metrics(threshold: float) -> MetricCollection:
    """Metrics of the decision `probability >= threshold`."""
    return MetricCollection(
        {
            "f1": BinaryF1Score(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "accuracy": BinaryAccuracy(threshold=threshold),
        }
    )


def top_fraction_metrics(probs: np.ndarray, labels: np.ndarray, fraction: float = 0.1) -> dict[str, float]:
    """Lift and capture rate in the riskiest `fraction`: what a retention team with that capacity gets.

    capture = share of all churners found in the top fraction; lift = churn rate there / overall rate.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    k = max(1, int(np.ceil(fraction * len(probs))))
    top = np.argsort(-probs, kind="stable")[:k]
    positives, base = labels.sum(), labels.mean() if len(labels) else 0.0
    pct = int(round(fraction * 100))
    return {
        f"capture_top{pct}": float(labels[top].sum() / positives) if positives else 0.0,
        f"lift_top{pct}": float(labels[top].mean() / base) if base else 0.0,
    }


def evaluate(probs: np.ndarray, labels: np.ndarray, threshold: float, stage: str) -> dict[str, float]:
    """All metrics for probabilities in [0, 1], named like the training logs (`{stage}/auroc`, ...)."""
    p = torch.tensor(np.asarray(probs, dtype=np.float32))  # a copy: inputs may be read-only views
    y = torch.tensor(np.asarray(labels)).int()
    values = {**ranking_metrics()(p, y), **threshold_metrics(threshold)(p, y)}
    out = {f"{stage}/{k}": float(v) for k, v in values.items()}
    out.update({f"{stage}/{k}": v for k, v in top_fraction_metrics(probs, labels).items()})
    out[f"{stage}/threshold"] = float(threshold)
    out[f"{stage}/positive_rate"] = float(y.float().mean())
    return out


def recency_auroc(aggregates: AggregateTable, labels: np.ndarray) -> float:
    """The simplest honest baseline: days since the last event, alone."""
    recency = aggregates.values[:, aggregates.names.index("days_since_last_event")].astype(np.float64)
    # torchmetrics reads scores outside [0, 1] as logits and squashes them: scale into [0, 1] first
    scaled = (recency - recency.min()) / max(float(np.ptp(recency)), 1e-12)
    # torch.tensor copies: labels may be a read-only memory map, which from_numpy would only warn about
    return float(binary_auroc(torch.tensor(scaled), torch.tensor(np.asarray(labels)).int()))
