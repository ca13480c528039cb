"""What a run says about customers beyond the probability: drivers, their global importance, how often the
top driver is the true one (synthetic data), and segments (RFM + behaviour clusters) with churn rates.

Networks and baselines both end here, on one split (the test cutoff), so the report and the benchmark read
the same files: drivers.parquet, driver_importance.csv/.png, segments.csv, segment_selection.png.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from churnwatch.data.snapshots import EventLog  # noqa: E402
from churnwatch.explain.drivers import (  # noqa: E402
    IndicatorCatalogue,
    context_frame,
    global_importance,
    match_rate,
    top_drivers,
)
from churnwatch.explain.segments import Segments, segment_table  # noqa: E402
from churnwatch.pipeline.dataset import ChurnData, Split  # noqa: E402

log = logging.getLogger(__name__)
DRIVERS_FILE = "drivers.parquet"


def truth_drivers(truth_path: str | Path, split: Split, log_: EventLog, horizon_days: int) -> pd.Series:
    """Per row of the split: the synthetic truth's dominant driver where the customer truly churned within
    the horizon after the cutoff, else NaN (a window churner the generator never made leave)."""
    truth = pd.read_parquet(truth_path).set_index("customer_id")
    t = truth.reindex(split.snaps.customer_ids(log_).astype(str))
    cutoff = pd.to_datetime(split.snaps.cutoff)
    churn_at = pd.to_datetime(t["churn_at"]).to_numpy()
    within = (churn_at >= cutoff) & (churn_at < cutoff + pd.Timedelta(days=horizon_days))
    return pd.Series(t["dominant_driver"].astype(object).where(within).to_numpy())


def write_insights(
    run_dir: str | Path,
    data: ChurnData,
    *,
    data_cfg: Mapping[str, Any],
    stage: str,
    probs: np.ndarray,
    scores: np.ndarray | None,
    catalogue: IndicatorCatalogue,
    segments: Segments,
) -> dict[str, Any]:
    """Drivers, importance, match rate and segments of one split; returns the metrics.json block.

    Attributions are centred on this split's mean per indicator (`center`, carried by the exported model):
    a driver is what pushes this customer's risk above the average customer's, whatever the reference
    the attribution method compared against."""
    run_dir = Path(run_dir)
    split: Split = getattr(data, stage)
    ids = split.snaps.customer_ids(data.log).astype(str)
    labels = split.snaps.label
    out: dict[str, Any] = {"split": stage}
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "cutoff": pd.to_datetime(split.snaps.cutoff),
            "label": labels.astype(np.float64),
            "probability": probs,
        }
    )
    seg = segments.assign(split.aggregates)
    frame = pd.concat([frame, seg.reset_index(drop=True)], axis=1)
    out["segments"] = {
        "rfm": segment_table(seg["rfm_segment"], labels).to_dict("records"),
        "clusters": segment_table(seg["behaviour_cluster"], labels)
        .merge(
            segments.clusters.describe()[["cluster", "label"]],
            left_on="segment",
            right_on="cluster",
            how="left",
        )
        .drop(columns="cluster")
        .to_dict("records"),
        "cluster_selection": segments.clusters.selection.to_dict("records"),
    }
    segments.clusters.plot_selection(run_dir / "segment_selection.png")
    if scores is not None:
        center = scores.mean(axis=0)
        out["center"] = center.tolist()
        scores = scores - center
        context = context_frame(split.aggregates, data.customers, ids)
        frame = pd.concat([frame, top_drivers(scores, catalogue, context)], axis=1)
        for k, name in enumerate(catalogue.names):
            frame[f"attribution_{name}"] = scores[:, k]
        importance = global_importance(scores, catalogue)
        importance.to_csv(run_dir / "driver_importance.csv", index=False)
        plot_importance(importance, run_dir / "driver_importance.png")
        out["importance"] = importance.to_dict("records")
        by_group = importance.groupby("group")["share"].sum().sort_values(ascending=False)
        out["importance_by_group"] = by_group.to_dict()
        truth_path = data_cfg.get("truth_path")
        if truth_path and Path(truth_path).exists():
            truth = truth_drivers(truth_path, split, data.log, int(data_cfg["horizon_days"]))
            frame["truth_driver"] = truth.to_numpy()
            churned = labels == 1
            out["match"] = {"churners": match_rate(frame["main_driver"][churned], truth[churned], catalogue)}
    frame.to_parquet(run_dir / DRIVERS_FILE, index=False)
    return out


def plot_importance(importance: pd.DataFrame, path: str | Path) -> Path:
    """Horizontal bars of each indicator's share, coloured by group."""
    imp = importance.iloc[::-1]
    groups = list(dict.fromkeys(importance["group"]))
    colours = {g: plt.cm.tab10(i) for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(imp) + 1.2))
    ax.barh(imp["indicator"], imp["share"], color=[colours[g] for g in imp["group"]])
    for g in groups:
        ax.barh([], [], color=colours[g], label=g.replace("_", " "))
    ax.set_xlabel("share of mean |attribution|")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
