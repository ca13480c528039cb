"""Operating threshold and risk tiers, chosen on validation predictions and stored with the model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from churnwatch.config.schema import ThresholdsConfig, typed
from churnwatch.errors import ConfigError

TIERS = ("high", "medium", "low")


THRESHOLDS = ("max_f1", "target_precision", "top_fraction", "top_k", "fixed")
TIER_RULES = ("top_fraction", "top_k", "target_precision", "fixed")
CAPACITY = ("top_fraction", "top_k")


@dataclass
class ThresholdRule(ThresholdsConfig):
    """The alert rule's settings (config/schema.py ThresholdsConfig: the keys, their meaning and defaults)
    with what they decide: the tier sizes of a capacity rule."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> ThresholdRule:
        rule = typed(cls, cfg, "thresholds")
        if rule.threshold not in THRESHOLDS:
            raise ConfigError(f"thresholds.threshold must be one of {THRESHOLDS}, got {rule.threshold!r}")
        if rule.tiers not in TIER_RULES:
            raise ConfigError(f"thresholds.tiers must be one of {TIER_RULES}, got {rule.tiers!r}")
        if rule.tiers == "fixed" and rule.high_probability < rule.medium_probability:
            raise ConfigError("thresholds: high_probability must be >= medium_probability")
        return rule

    def capacity(self, n: int) -> tuple[int, int]:
        """(high, medium) tier sizes of a capacity rule in a population of n customers."""
        if self.tiers == "top_k":
            high = min(n, int(self.high_k))
            return high, min(n - high, int(self.medium_k))
        high = min(n, int(round(self.high_fraction * n)))
        return high, min(n - high, int(round(self.medium_fraction * n)))

    def k_as_fraction(self, k: int, n: int) -> float:
        return k / max(self.population or n, 1)


@dataclass(frozen=True)
class Operating:
    """What the rule chose: the threshold and the two tier cut-offs (probability >= high_cut → high)."""

    threshold: float
    high_cut: float
    medium_cut: float
    rule: dict

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _precision_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (descending, distinct) with precision and recall of `probs >= threshold`."""
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labels[order]
    tp = np.cumsum(y)
    k = np.arange(1, len(p) + 1)
    last_of_value = np.r_[p[1:] != p[:-1], True]
    return p[last_of_value], tp[last_of_value] / k[last_of_value], tp[last_of_value] / max(y.sum(), 1)


def _lowest_reaching(probs: np.ndarray, labels: np.ndarray, precision: float) -> float:
    thr, prec, _ = _precision_curve(probs, labels)
    ok = np.flatnonzero(prec >= precision)
    return float(thr[ok[-1]]) if len(ok) else float(thr[0]) + 1e-6  # unreachable: nobody qualifies


def _top(probs: np.ndarray, fraction: float) -> float:
    k = max(1, int(round(fraction * len(probs))))
    return float(np.sort(probs)[::-1][min(k, len(probs)) - 1])


def choose_operating_point(probs: np.ndarray, labels: np.ndarray, rule: ThresholdRule) -> Operating:
    """The threshold and the tier cut-offs on validation probabilities (capacity rules: the cut-offs that
    fill each tier on validation, for the expected precision and recall)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    n = len(probs)
    if n == 0:
        return Operating(0.5, 1.0, 0.5, asdict(rule))
    if rule.threshold == "max_f1":
        thr, prec, rec = _precision_curve(probs, labels)
        f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
        threshold = float(thr[int(np.argmax(f1))])
    elif rule.threshold == "target_precision":
        threshold = _lowest_reaching(probs, labels, rule.target_precision)
    elif rule.threshold == "top_fraction":
        threshold = _top(probs, rule.top_fraction)
    elif rule.threshold == "top_k":
        threshold = _top(probs, rule.k_as_fraction(rule.top_k, n))
    else:
        threshold = float(rule.probability)
    if rule.tiers == "top_fraction":
        high = _top(probs, rule.high_fraction)
        medium = _top(probs, rule.high_fraction + rule.medium_fraction)
    elif rule.tiers == "top_k":
        high = _top(probs, rule.k_as_fraction(rule.high_k, n))
        medium = _top(probs, rule.k_as_fraction(rule.high_k + rule.medium_k, n))
    elif rule.tiers == "target_precision":
        high = _lowest_reaching(probs, labels, rule.high_precision)
        medium = min(_lowest_reaching(probs, labels, rule.medium_precision), high)
    else:
        high, medium = float(rule.high_probability), float(rule.medium_probability)
    return Operating(threshold, high, medium, asdict(rule))


def assign_tiers(probs: np.ndarray, op: Operating, by_capacity: bool = True) -> np.ndarray:
    """'high' / 'medium' / 'low' per probability. Capacity rules fill the tiers by rank (ties: first
    come first) when `by_capacity`; otherwise, and for cut-off rules, probability >= cut."""
    probs = np.asarray(probs, dtype=np.float64)
    positions = np.empty(len(probs), dtype=np.int64)
    positions[np.argsort(-probs, kind="stable")] = np.arange(len(probs))
    return tiers_at(positions, probs, len(probs), op, by_capacity)


def tiers_at(
    positions: np.ndarray, probs: np.ndarray, n: int, op: Operating, by_capacity: bool = True
) -> np.ndarray:
    """Tiers of rows at rank `positions` (0 = the riskiest) of a ranked population of `n`, with their
    probabilities: capacity rules go by position, cut-off rules by probability. Scoring calls it block
    by block of the ranked order."""
    rule = ThresholdRule.from_config(op.rule) if op.rule else ThresholdRule()
    if by_capacity and rule.tiers in CAPACITY:
        high, medium = rule.capacity(n)
        return np.where(positions < high, TIERS[0], np.where(positions < high + medium, TIERS[1], TIERS[2]))
    probs = np.asarray(probs, dtype=np.float64)
    return np.where(probs >= op.high_cut, TIERS[0], np.where(probs >= op.medium_cut, TIERS[1], TIERS[2]))


def tier_table(
    probs: np.ndarray, labels: np.ndarray, op: Operating, by_capacity: bool = False
) -> list[dict[str, Any]]:
    """Per tier: size, churners, precision (churn rate in the tier), recall (share of all churners) and
    cumulative recall (this tier and the riskier ones): what an alert in that tier is worth."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    tiers = assign_tiers(probs, op, by_capacity)
    positives = max(float(labels.sum()), 1.0)
    rows, found = [], 0.0
    for tier in TIERS:
        sel = tiers == tier
        churners = float(labels[sel].sum())
        found += churners
        rows.append(
            {
                "tier": tier,
                "customers": int(sel.sum()),
                "share": float(sel.mean()) if len(sel) else 0.0,
                "churners": int(churners),
                "precision": churners / sel.sum() if sel.any() else float("nan"),
                "recall": churners / positives,
                "cumulative_recall": found / positives,
                "min_probability": float(probs[sel].min()) if sel.any() else float("nan"),
                "mean_probability": float(probs[sel].mean()) if sel.any() else float("nan"),
            }
        )
    return rows
