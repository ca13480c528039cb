"""Customer segments for the early-warning report and the scoring output.

Two views of the same aggregate features: retailer-style RFM segments (quintile scores on recency,
frequency and monetary value, named from the R×F grid marketing teams already use) and K-means clusters
on behaviour features (k chosen by silhouette). Both are fitted on training rows only and keep their
fitted state as plain JSON, so an exported model can carry them and score new customers the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateTable
from churnwatch.features.stats import signed_log1p

QUINTILES = (0.2, 0.4, 0.6, 0.8)

# Rows: R score 1..5; columns: F score 1..5 (see RFMSegmenter).
RF_GRID = np.array(
    [
        ["lost", "lost", "at_risk", "at_risk", "cannot_lose"],
        ["hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose"],
        ["about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"],
        ["promising", "potential_loyalist", "potential_loyalist", "loyal", "loyal"],
        ["new", "potential_loyalist", "potential_loyalist", "champions", "champions"],
    ]
)
RFM_SEGMENTS = tuple(dict.fromkeys(RF_GRID[::-1].ravel()))

DEFAULT_BEHAVIOUR = (
    "recency_days",
    "n_purchase_occasions",
    "spend_total",
    "spend_mean",
    "purchases_per_30d",
    "gap_mean_days",
    "tenure_days",
    "freq_trend_30_90",
    "spend_trend_30_90",
    "n_events_90d",
    "days_since_last_event",
    "mix_shift_category",
)
N_INIT = 10
DISTINCT_Z = 0.25
"""A center coordinate within this many standard deviations of the mean is not worth naming in a label."""


def _column(table: AggregateTable, name: str) -> np.ndarray:
    if name not in table.names:
        raise KeyError(f"aggregate table has no column {name!r} (columns: {table.names})")
    return table.values[:, table.names.index(name)].astype(np.float64)


class RFMSegmenter:
    """Quintile RFM scores (1..5, 5 = best) and the retailers' R×F segment names.

    Edges are the training quintiles of each measure. A value's score is the quintile its training
    percentile falls in: for frequency and monetary 1 + the number of edges strictly below it, for recency
    (lower is better) 5 − the number of edges at or below it. Tied values therefore share one score (the
    lowest their tie allows), duplicate edges are harmless and a degenerate column (every customer bought
    once) scores everyone 1; scores stay in 1..5 for any input, including values outside the training range.

    Segments from (R, F), the grid behind the usual RFM segment maps:

        R\\F   1               2                   3                   4           5
        5     new             potential_loyalist  potential_loyalist  champions   champions
        4     promising       potential_loyalist  potential_loyalist  loyal       loyal
        3     about_to_sleep  about_to_sleep      need_attention      loyal       loyal
        2     hibernating     hibernating         at_risk             at_risk     cannot_lose
        1     lost            lost                at_risk             at_risk     cannot_lose

    M is reported in `m_score` and `rfm_score` but does not change the segment.
    """

    def __init__(
        self,
        recency: str = "recency_days",
        frequency: str = "n_purchase_occasions",
        monetary: str = "spend_total",
    ):
        self.columns = {"recency": recency, "frequency": frequency, "monetary": monetary}
        self.edges: dict[str, list[float]] = {}

    def fit(self, table: AggregateTable) -> RFMSegmenter:
        """Learn the quintile edges from `table`, the training rows."""
        if len(table.values) == 0:
            raise ValueError("RFMSegmenter.fit needs at least one training row")
        self.edges = {
            measure: np.quantile(_column(table, name), QUINTILES).tolist()
            for measure, name in self.columns.items()
        }
        return self

    def transform(self, table: AggregateTable) -> pd.DataFrame:
        """r_score, f_score, m_score (int8), rfm_score ("545") and rfm_segment, one row per table row."""
        if not self.edges:
            raise RuntimeError("RFMSegmenter used before fit")
        r, f = self._rf(table)
        m = 1 + np.searchsorted(self.edges["monetary"], _column(table, self.columns["monetary"]), side="left")
        out = pd.DataFrame({"r_score": r, "f_score": f, "m_score": m}).astype(np.int8)
        out["rfm_score"] = (100 * r + 10 * f + m).astype(str)
        out["rfm_segment"] = RF_GRID[r - 1, f - 1]
        return out

    def segment(self, table: AggregateTable) -> np.ndarray:
        """The rfm_segment of each table row alone (what scoring needs), without the scores' frame."""
        if not self.edges:
            raise RuntimeError("RFMSegmenter used before fit")
        r, f = self._rf(table)
        return RF_GRID[r - 1, f - 1]

    def _rf(self, table: AggregateTable) -> tuple[np.ndarray, np.ndarray]:
        r = 5 - np.searchsorted(self.edges["recency"], _column(table, self.columns["recency"]), side="right")
        f = 1 + np.searchsorted(
            self.edges["frequency"], _column(table, self.columns["frequency"]), side="left"
        )
        return r, f

    def state(self) -> dict[str, Any]:
        """JSON-able fitted state (carried in an exported model's metadata)."""
        return {"columns": dict(self.columns), "edges": {k: list(v) for k, v in self.edges.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RFMSegmenter:
        seg = cls(**state["columns"])
        seg.edges = {k: [float(e) for e in v] for k, v in state["edges"].items()}
        return seg


class BehaviourClusters:
    """K-means on behaviour features: signed log1p, standardised with training statistics.

    `fit` runs K-means for every k in `k_range` (inclusive, plus `k` when given), records the inertia
    (for the elbow) and the silhouette on a seeded sample of at most `sample` rows, and keeps the model with
    the best silhouette (or `k`). Clusters are numbered by training size, largest first; `transform` assigns
    the nearest stored center with numpy alone, so it gives the same ids after a state round trip.
    Features the table lacks are skipped.
    """

    def __init__(
        self,
        features: Sequence[str] = DEFAULT_BEHAVIOUR,
        k_range: tuple[int, int] = (2, 8),
        k: int | None = None,
        seed: int = 0,
        sample: int = 5000,
    ):
        if not 2 <= k_range[0] <= k_range[1] or (k is not None and k < 2):
            raise ConfigError(f"need 2 <= k_range[0] <= k_range[1] and k >= 2, got k_range={k_range}, k={k}")
        self.features = list(features)
        self.k_range = (int(k_range[0]), int(k_range[1]))
        self.k = k
        self.seed = int(seed)
        self.sample = int(sample)
        self.used: list[str] = []
        self.mean = np.zeros(0)
        self.std = np.ones(0)
        self.centers = np.zeros((0, 0))
        """Standardised centers (k, features), cluster id = row."""
        self.sizes = np.zeros(0, dtype=np.int64)
        self._selection = pd.DataFrame(columns=["k", "inertia", "silhouette", "chosen"])

    def fit(self, table: AggregateTable) -> BehaviourClusters:
        from sklearn.cluster import KMeans  # (fitting only: scoring loads fitted centers without sklearn)
        from sklearn.metrics import silhouette_score

        self.used = [f for f in self.features if f in table.names]
        if not self.used:
            raise ConfigError(
                f"none of the behaviour features {self.features} is in the aggregate table "
                f"(columns: {table.names})"
            )
        raw = self._raw(table)
        self.mean = raw.mean(axis=0)
        std = raw.std(axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)
        z = (raw - self.mean) / self.std
        ks = sorted({*range(self.k_range[0], self.k_range[1] + 1), *([self.k] if self.k else [])})
        if len(z) <= ks[-1]:
            raise ConfigError(f"{len(z)} training rows are too few for k up to {ks[-1]}")
        rng = np.random.default_rng(self.seed)
        rows = np.sort(rng.choice(len(z), self.sample, replace=False)) if len(z) > self.sample else None
        zs = z if rows is None else z[rows]
        models, scan = {}, []
        # one BLAS/OpenMP thread: on small machines that also run torch, KMeans' own threads thrash
        with threadpool_limits(1):
            for k in ks:
                model = KMeans(n_clusters=k, n_init=N_INIT, random_state=self.seed).fit(z)
                labels = model.labels_ if rows is None else model.labels_[rows]
                # Duplicate points can leave fewer distinct clusters than k: silhouette is then undefined.
                ok = 2 <= len(np.unique(labels)) <= len(labels) - 1
                sil = float(silhouette_score(zs, labels)) if ok else np.nan
                models[k] = model
                scan.append((k, float(model.inertia_), sil))
        selection = pd.DataFrame(scan, columns=["k", "inertia", "silhouette"])
        if self.k is not None:
            chosen = self.k
        elif selection["silhouette"].notna().any():
            chosen = int(selection["k"][selection["silhouette"].idxmax()])
        else:
            raise ValueError("no k in k_range gave a defined silhouette (are all training rows identical?)")
        selection["chosen"] = selection["k"] == chosen
        self._selection = selection
        counts = np.bincount(models[chosen].labels_, minlength=chosen)
        order = np.argsort(-counts, kind="stable")
        self.centers = models[chosen].cluster_centers_.astype(np.float64)[order]
        self.sizes = counts[order]
        return self

    def transform(self, table: AggregateTable) -> np.ndarray:
        """int64 cluster id per row: the nearest stored center in standardised space."""
        if not self.used:
            raise RuntimeError("BehaviourClusters used before fit")
        z = (self._raw(table) - self.mean) / self.std
        dist = -2 * z @ self.centers.T + (self.centers**2).sum(axis=1)  # |z|² is the same for every center
        return dist.argmin(axis=1)

    @property
    def selection(self) -> pd.DataFrame:
        """One row per k tried: k, inertia, silhouette (NaN where undefined), chosen."""
        return self._selection.copy()

    def describe(self) -> pd.DataFrame:
        """Per cluster: training customers and share, a short label, and the center in original units."""
        z = self.centers
        y = z * self.std + self.mean
        frame = pd.DataFrame(np.sign(y) * np.expm1(np.abs(y)), columns=self.used)  # inverse signed log1p
        frame.insert(0, "cluster", np.arange(len(z)))
        frame.insert(1, "customers", self.sizes)
        frame.insert(2, "share", self.sizes / max(int(self.sizes.sum()), 1))
        frame.insert(3, "label", [self._label(row) for row in z])
        return frame

    def _label(self, z: np.ndarray) -> str:
        top = [j for j in np.argsort(-np.abs(z), kind="stable")[:2] if abs(z[j]) >= DISTINCT_Z]
        return ", ".join(f"{'high' if z[j] > 0 else 'low'} {self.used[j]}" for j in top) or "typical"

    def plot_selection(self, path: str | Path) -> Path:
        """Elbow (inertia against k) and silhouette against k side by side, the chosen k marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.used:
            raise RuntimeError("BehaviourClusters used before fit")
        path = Path(path)
        sel = self._selection
        chosen = sel[sel["chosen"]]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, col, title in ((axes[0], "inertia", "elbow"), (axes[1], "silhouette", "silhouette")):
            ax.plot(sel["k"], sel[col], marker="o")
            ax.plot(chosen["k"], chosen[col], marker="o", markersize=11, color="#d62728", linestyle="none")
            ax.axvline(float(chosen["k"].iloc[0]), color="#d62728", alpha=0.3, linestyle="--")
            ax.set_xlabel("k")
            ax.set_ylabel(col)
            ax.set_title(f"{title} (chosen k = {int(chosen['k'].iloc[0])})")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def state(self) -> dict[str, Any]:
        """JSON-able fitted state; an undefined silhouette is stored as null."""
        sel = self._selection
        return {
            "features": self.features,
            "k_range": list(self.k_range),
            "k": self.k,
            "seed": self.seed,
            "sample": self.sample,
            "used": self.used,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "centers": self.centers.tolist(),
            "sizes": self.sizes.tolist(),
            "selection": {
                "k": sel["k"].astype(int).tolist(),
                "inertia": sel["inertia"].astype(float).tolist(),
                "silhouette": [None if np.isnan(s) else float(s) for s in sel["silhouette"]],
                "chosen": sel["chosen"].astype(bool).tolist(),
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> BehaviourClusters:
        clusters = cls(state["features"], tuple(state["k_range"]), state["k"], state["seed"], state["sample"])
        clusters.used = list(state["used"])
        clusters.mean = np.asarray(state["mean"], dtype=np.float64)
        clusters.std = np.asarray(state["std"], dtype=np.float64)
        clusters.centers = np.asarray(state["centers"], dtype=np.float64).reshape(-1, len(clusters.used))
        clusters.sizes = np.asarray(state["sizes"], dtype=np.int64)
        sel = dict(state["selection"])
        sel["silhouette"] = [np.nan if s is None else s for s in sel["silhouette"]]
        clusters._selection = pd.DataFrame(sel).astype(
            {"k": np.int64, "inertia": np.float64, "silhouette": np.float64, "chosen": bool}
        )
        return clusters

    def _raw(self, table: AggregateTable) -> np.ndarray:
        return signed_log1p(np.column_stack([_column(table, name) for name in self.used]))


def segment_table(segments: pd.Series | np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Per segment: customers, share and churn rate (NaN without labels), riskiest (or largest) first."""
    seg = pd.Series(np.asarray(segments), name="segment")
    if labels is not None and len(labels) != len(seg):
        raise ValueError(f"{len(seg)} segments but {len(labels)} labels")
    y = pd.Series(np.nan if labels is None else np.asarray(labels, dtype=np.float64), index=seg.index)
    grouped = y.groupby(seg)
    out = pd.DataFrame({"customers": grouped.size(), "churn_rate": grouped.mean()})
    out.insert(1, "share", out["customers"] / max(len(seg), 1))
    keys = ["customers"] if labels is None else ["churn_rate", "customers"]
    out = out.sort_values(keys, ascending=False, kind="stable")
    return out.rename_axis("segment").reset_index()


class Segments:
    """RFM segments and behaviour clusters, fitted on training rows, carried by the exported model."""

    def __init__(self, rfm: RFMSegmenter, clusters: BehaviourClusters):
        self.rfm = rfm
        self.clusters = clusters

    @classmethod
    def fit(cls, table: AggregateTable, seed: int = 0) -> Segments:
        return cls(RFMSegmenter().fit(table), BehaviourClusters(seed=seed).fit(table))

    def assign(self, table: AggregateTable) -> pd.DataFrame:
        return pd.DataFrame(self.columns(table))

    def inputs(self) -> list[str]:
        """The aggregate columns the segments read."""
        return [*self.rfm.columns.values(), *self.clusters.used]

    def columns(self, table: AggregateTable) -> dict[str, np.ndarray]:
        """rfm_segment and behaviour_cluster per table row, as arrays (scoring frames them once)."""
        return {"rfm_segment": self.rfm.segment(table), "behaviour_cluster": self.clusters.transform(table)}

    def state(self) -> dict[str, Any]:
        return {"rfm": self.rfm.state(), "clusters": self.clusters.state()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Segments:
        return cls(RFMSegmenter.from_state(state["rfm"]), BehaviourClusters.from_state(state["clusters"]))
