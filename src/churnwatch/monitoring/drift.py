"""Drift statistics: is today's scoring population still the one the model was trained and judged on?

Training profiles its reference population (the test cutoff, which looks like a scoring run; else
validation) and the profile travels in the artifact's metadata. Monitoring profiles today's population the
same way and compares: population stability (PSI) of the aggregate features and of the score on the
reference's quantile bins, the share of out-of-vocabulary event values, event volume, and the share of
customers above the tier cut-offs; and the freshness of today's input (days without any event before
the cutoff: a late feed). `verdict` turns that into ok / warn / retrain with the reasons;
`backtest` judges a past date whose churn labels are now known. Everything here is pure and JSON-able.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from churnwatch.data.schema import MISSING
from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots
from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateTable
from churnwatch.features.stats import OOV
from churnwatch.features.window import FlatHistories
from churnwatch.models.thresholds import TIERS, Operating, assign_tiers

if TYPE_CHECKING:  # the training-time reference only reads them; a monitor run never builds one
    from churnwatch.pipeline.dataset import ChurnData, Split

PROFILE_VERSION = 1
BINS = 10
PSI_EPSILON = 1e-4
VOLUME_WINDOW_DAYS = 30
LEVELS = ("ok", "warn", "retrain")
KEY_FEATURES = (
    "recency_days",
    "n_purchases_90d",
    "spend_90d",
    "purchases_per_30d",
    "freq_trend_30_90",
    "gap_mean_days",
    "days_since_last_event",
    "tenure_days",
    "n_events_30d",
)
KEY_PATTERNS = ("*satisfaction_mean*", "*complaint*_90d", "*price_change*_90d", "*competitor_offer*_90d")


@dataclass(frozen=True)
class Population:
    """One cutoff's population as monitoring sees it: row-aligned features, scores and event ids."""

    cutoff: pd.Timestamp
    aggregates: AggregateTable
    probs: np.ndarray
    cat: np.ndarray
    """Encoded event categorical ids (events × fields), as the model sees them; OOV = 1."""
    volume: dict[str, float]
    freshness: dict[str, Any] = field(default_factory=dict)
    """How recent the newest history is (`freshness_stats`); monitoring fills it, the reference needs none."""


# -- distributions ----------------------------------------------------------------------------------------
def psi(expected_props: Sequence[float], actual_props: Sequence[float], eps: float = PSI_EPSILON) -> float:
    """Population stability index, sum (a - e) ln(a / e); empty bins count as `eps` so PSI stays finite."""
    e = np.clip(np.asarray(expected_props, dtype=np.float64), eps, None)
    a = np.clip(np.asarray(actual_props, dtype=np.float64), eps, None)
    if e.shape != a.shape:
        raise ValueError(f"psi: {len(e)} expected bins but {len(a)} actual bins")
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Distinct interior quantiles: ties (counts, point masses) merge bins instead of leaving empty ones."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return []
    return np.unique(np.quantile(values, np.arange(1, bins) / bins, method="inverted_cdf")).tolist()


def bin_shares(values: np.ndarray, edges: Sequence[float]) -> list[float]:
    """Share of values per right-closed bin (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="left"), minlength=len(edges) + 1)
    return (counts / max(len(values), 1)).tolist()


def distribution(values: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Quantile edges, the share in each bin and the mean: what PSI needs later, as JSON."""
    edges = quantile_edges(values, bins)
    values = np.asarray(values, dtype=np.float64)
    return {
        "edges": edges,
        "shares": bin_shares(values, edges),
        "mean": float(values.mean()) if len(values) else float("nan"),
    }


def shift(reference: Mapping[str, Any], values: np.ndarray) -> dict[str, float | None]:
    """PSI of `values` on the reference's bins, both means, and the reference's training drift if any."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "psi": psi(reference["shares"], bin_shares(values, reference["edges"])),
        "reference_mean": float(reference["mean"]),
        "today_mean": float(values.mean()) if len(values) else float("nan"),
        "training_drift": reference.get("training_drift"),
    }


# -- the other views --------------------------------------------------------------------------------------
def oov_shares(cat: np.ndarray, vocabs: Mapping[str, Sequence[str]], fields: Sequence[str]) -> dict[str, Any]:
    """Per categorical event field: share of its values the vocabulary does not know (OOV), among events
    that have a value (the explicit missing token is known and does not count)."""
    out = {}
    for j, name in enumerate(fields):
        tokens = list(vocabs[name])
        ids = cat[:, j]
        has_value = ids != tokens.index(MISSING) if MISSING in tokens else np.ones(len(ids), bool)
        n = int(has_value.sum())
        out[name] = {"share": float((ids[has_value] == OOV).sum() / n) if n else 0.0, "values": n}
    return out


def volume_stats(log: EventLog, snaps: Snapshots, window_days: int = VOLUME_WINDOW_DAYS) -> dict[str, float]:
    """Population size and event activity in the `window_days` before each row's cutoff."""
    n = len(snaps)
    history = FlatHistories.of(log, snaps)
    recent = history.total(history.age <= window_days)
    return {
        "customers": float(n),
        f"events_per_customer_{window_days}d": float(recent.mean()) if n else 0.0,
        f"active_share_{window_days}d": float((recent > 0).mean()) if n else 0.0,
    }


def freshness_stats(log: EventLog, snaps: Snapshots) -> dict[str, Any]:
    """The newest event in the population's histories and the whole days between it and the cutoff with
    no event at all (`silent_days`): a feed that stopped or arrives late leaves the last days empty, which
    moves no distribution much (everyone's recency grows by the same few days) but is plain here."""
    if not len(snaps):
        return {}
    newest = int(log.ts[snaps.end - 1].max())
    cutoff = int(snaps.cutoff.view(np.int64).max())
    return {"last_event": str(pd.Timestamp(newest)), "silent_days": float((cutoff - newest) // DAY_NS)}


def tier_shares(probs: np.ndarray, high_cut: float, medium_cut: float) -> dict[str, float]:
    """Share of customers above the tier cut-offs: capacity tiers always fill 10/20/70 by rank, so the
    cut-offs fitted on validation are what shows the scores moving."""
    tiers = assign_tiers(probs, Operating(high_cut, high_cut, medium_cut, {}), by_capacity=False)
    return {t: float((tiers == t).mean()) if len(tiers) else 0.0 for t in TIERS}


def key_features(available: Sequence[str], wanted: Sequence[str] | None = None) -> list[str]:
    """The features that drive the verdict: `wanted` (each must exist), else the defaults that exist."""
    if wanted:
        missing = [n for n in wanted if n not in available]
        if missing:
            raise ConfigError(
                f"monitor features {missing} are not in the reference (it has {list(available)})"
            )
        return list(wanted)
    chosen = [n for n in KEY_FEATURES if n in available]
    for pattern in KEY_PATTERNS:
        chosen += [n for n in available if fnmatch.fnmatchcase(n, pattern) and n not in chosen]
    return chosen


# -- reference, comparison, verdict -------------------------------------------------------------------------
def reference_profile(
    pop: Population,
    *,
    vocabs: Mapping[str, Sequence[str]],
    fields: Sequence[str],
    cuts: tuple[float, float],
    split: str,
    labels: np.ndarray | None = None,
    earlier: Population | None = None,
) -> dict[str, Any]:
    """The training-time profile stored in the artifact: every aggregate feature (so monitoring can choose
    which to watch without a re-export), the score, OOV shares, volume and tier shares.

    With an `earlier` labelled population (the last training cutoff), each feature and the score also get
    `training_drift`: their PSI from that cutoff to this one. The model was judged (test metrics) across
    that drift, so calendar-bound features (tenure in a log with a fixed start, counts of scheduled
    events) can be told apart from drift the model has never been shown to survive."""
    table = pop.aggregates
    features = {n: distribution(table.values[:, j]) for j, n in enumerate(table.names)}
    score = distribution(pop.probs)
    if earlier is not None:
        for j, n in enumerate(earlier.aggregates.names):
            features[n]["training_drift"] = shift(features[n], earlier.aggregates.values[:, j])["psi"]
        score["training_drift"] = shift(score, earlier.probs)["psi"]
    return {
        "version": PROFILE_VERSION,
        "split": split,
        "cutoff": str(pop.cutoff.date()),
        "drift_from": str(earlier.cutoff.date()) if earlier is not None else None,
        "bins": BINS,
        "features": features,
        "score": score,
        "oov": oov_shares(pop.cat, vocabs, fields),
        "volume": pop.volume,
        "tiers": tier_shares(pop.probs, *cuts),
        "churn_rate": float(np.nanmean(labels)) if labels is not None and len(labels) else None,
    }


def compare(
    reference: Mapping[str, Any],
    today: Population,
    vocabs: Mapping[str, Sequence[str]],
    fields: Sequence[str],
    cuts: tuple[float, float],
    features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Today against the reference, figure by figure (no judgement: that is `verdict`)."""
    names = key_features(list(reference["features"]), features)
    column = {n: j for j, n in enumerate(today.aggregates.names)}
    ref_oov, today_oov = reference["oov"], oov_shares(today.cat, vocabs, fields)
    ref_tiers, today_tiers = reference["tiers"], tier_shares(today.probs, *cuts)
    return {
        "features": {
            n: shift(reference["features"][n], today.aggregates.values[:, column[n]]) for n in names
        },
        "score": shift(reference["score"], today.probs),
        "oov": {
            f: {
                "reference": ref_oov[f]["share"],
                "today": today_oov[f]["share"],
                "increase": today_oov[f]["share"] - ref_oov[f]["share"],
                "values": today_oov[f]["values"],
            }
            for f in fields
            if f in ref_oov
        },
        "volume": {
            k: {
                "reference": v,
                "today": today.volume.get(k, float("nan")),
                "ratio": today.volume.get(k, float("nan")) / v if v else float("nan"),
            }
            for k, v in reference["volume"].items()
        },
        "tiers": {
            t: {"expected": ref_tiers[t], "today": today_tiers[t], "diff": today_tiers[t] - ref_tiers[t]}
            for t in TIERS
        },
        "freshness": dict(today.freshness),
    }


def _level(value: float, limits: Mapping[str, float | None]) -> str:
    """retrain / warn / ok of a value against {warn, retrain} (a null limit never fires)."""
    for level in ("retrain", "warn"):
        limit = limits.get(level)
        if limit is not None and not np.isnan(value) and value >= float(limit):
            return level
    return "ok"


def verdict(report: Mapping[str, Any], thresholds: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The worst level over all checks, and every check that is not ok (worst first), with its figure and
    limit. Volume ratios count in both directions (0.5 is as far off as 2). With
    `psi.tolerate_training_drift`, a PSI limit is never below the drift the model was judged across in
    training (`training_drift`): only drift beyond what the test cutoff already showed raises a level."""
    psi_limits = thresholds["psi"]
    tolerate = bool(psi_limits.get("tolerate_training_drift", False))

    def psi_check(check: str, name: str, f: Mapping[str, Any]) -> tuple[str, str, float, Mapping[str, Any]]:
        drift = f.get("training_drift") if tolerate else None
        if drift is None:
            return check, name, f["psi"], psi_limits
        raised = {k: max(float(psi_limits[k]), drift) for k in LEVELS[1:] if psi_limits.get(k) is not None}
        return check, name, f["psi"], raised

    checks = [psi_check("feature_psi", n, f) for n, f in report["features"].items()]
    checks.append(psi_check("score_psi", "churn_probability", report["score"]))
    checks += [("oov", n, o["increase"], thresholds["oov_increase"]) for n, o in report["oov"].items()]
    for name, v in report["volume"].items():
        ratio = v["ratio"]
        off = max(ratio, 1 / ratio) if np.isfinite(ratio) and ratio > 0 else float("inf")
        checks.append(
            ("volume", name, off, thresholds["population_ratio" if name == "customers" else "volume_ratio"])
        )
    worst_tier = max(report["tiers"], key=lambda t: abs(report["tiers"][t]["diff"]))
    tier_diff = abs(report["tiers"][worst_tier]["diff"])
    checks.append(("tier_share", worst_tier, tier_diff, thresholds["tier_share"]))
    silent = (report.get("freshness") or {}).get("silent_days")
    if silent is not None and thresholds.get("freshness"):
        checks.append(("freshness", "silent_days", silent, thresholds["freshness"]))
    reasons = []
    for check, name, value, limits in checks:
        level = _level(value, limits)
        if level != "ok":
            reasons.append(
                {
                    "check": check,
                    "name": name,
                    "value": float(value),
                    "limit": float(limits[level]),
                    "level": level,
                }
            )
    reasons.sort(key=lambda r: -LEVELS.index(r["level"]))
    overall = max((r["level"] for r in reasons), key=LEVELS.index, default="ok")
    return overall, reasons


def backtest(probs: np.ndarray, labels: np.ndarray, tiers: np.ndarray) -> dict[str, Any]:
    """Realised ranking quality and, per tier as alerted, precision (churn rate) and recall (share of all
    churners): what the scores of a past date turned out to be worth."""
    from sklearn.metrics import average_precision_score, roc_auc_score  # (a monitor run starts lean)

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    tiers = np.asarray(tiers).astype(str)
    both = len(np.unique(labels)) == 2
    positives = max(float(labels.sum()), 1.0)
    return {
        "customers": len(labels),
        "churn_rate": float(labels.mean()) if len(labels) else float("nan"),
        "mean_probability": float(probs.mean()) if len(probs) else float("nan"),
        "auroc": float(roc_auc_score(labels, probs)) if both else None,
        "average_precision": float(average_precision_score(labels, probs)) if both else None,
        "tiers": {
            t: {
                "customers": int((tiers == t).sum()),
                "churners": int(labels[tiers == t].sum()),
                "precision": float(labels[tiers == t].mean()) if (tiers == t).any() else None,
                "recall": float(labels[tiers == t].sum() / positives),
            }
            for t in TIERS
        },
    }


def training_reference(
    data: ChurnData, predictions: Mapping[str, np.ndarray], cuts: tuple[float, float]
) -> dict[str, Any]:
    """The profile of a finished run: its test cutoff with the calibrated test predictions (the latest
    snapshot, which looks like a scoring run), else validation."""
    fields = list(data.encoder.schema.categorical)

    def population(split: Split, probs: np.ndarray, rows: np.ndarray) -> Population:
        table = split.aggregates
        return Population(
            pd.Timestamp(split.snaps.cutoff[rows].max()),
            AggregateTable(table.values[rows], table.names, table.categorical),
            np.asarray(probs, dtype=np.float64)[rows],
            split.seqs.subset(rows).cat[:, : len(fields)],
            volume_stats(data.log, split.snaps.subset(rows)),
        )

    stage = "test" if data.test is not None and "test" in predictions else "val"
    split = getattr(data, stage)
    pop = population(split, predictions[stage], np.arange(len(split)))
    earlier = None
    if stage == "test":  # validation customers at the last training cutoff: labelled, out of sample
        rows = np.flatnonzero(data.val.snaps.cutoff == data.val.snaps.cutoff.max())
        earlier = population(data.val, predictions["val"], rows)
    vocabs = {name: vocab.tokens for name, vocab in data.encoder.vocabs.items()}
    return reference_profile(
        pop, vocabs=vocabs, fields=fields, cuts=cuts, split=stage, labels=split.snaps.label, earlier=earlier
    )
