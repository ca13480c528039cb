"""Per-row validation and test predictions of a run, saved next to metrics.json.

Ensembles, learning curves and offline analysis start from these, so every model (network or baseline)
writes the same file: one row per (split, customer_id, cutoff) with the label and the churn probability.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from churnwatch.data.snapshots import EventLog
from churnwatch.io.atomic import atomic_path
from churnwatch.pipeline.dataset import Split

PREDICTIONS_FILE = "predictions.parquet"
KEY = ["split", "customer_id", "cutoff"]


def prediction_frame(
    stage: str, split: Split, probs: np.ndarray, log: EventLog, raw: np.ndarray | None = None
) -> pd.DataFrame:
    """`probability` is what the model reports (calibrated); `probability_raw` what it gave before."""
    if len(probs) != len(split):
        raise ValueError(f"{stage}: {len(probs)} predictions for {len(split)} rows")
    return pd.DataFrame(
        {
            "split": stage,
            "customer_id": split.snaps.customer_ids(log).astype(str),
            "cutoff": pd.to_datetime(split.snaps.cutoff),
            "label": split.snaps.label.astype(np.float64),
            "probability": np.asarray(probs, dtype=np.float64),
            "probability_raw": np.asarray(probs if raw is None else raw, dtype=np.float64),
        }
    )


def prediction_table(
    splits: Mapping[str, Split],
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    log: EventLog,
) -> pd.DataFrame:
    """Every stage's rows; `predictions` maps a stage to its (raw, calibrated) probabilities in split
    order."""
    return pd.concat(
        [
            prediction_frame(stage, splits[stage], calibrated, log, raw)
            for stage, (raw, calibrated) in predictions.items()
        ],
        ignore_index=True,
    )


def write_predictions(run_dir: str | Path, frame: pd.DataFrame) -> Path:
    """<run_dir>/predictions.parquet, replaced whole (a reader never sees part of it)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    with atomic_path(path, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def read_predictions(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no predictions; was {run_dir} trained by churnwatch train?")
    return pd.read_parquet(path)
