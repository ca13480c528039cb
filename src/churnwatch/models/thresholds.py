"""Operating threshold and risk tiers, chosen on validation predictions and stored with the model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TIERS = ("high", "medium", "low")


@dataclass(frozen=True)
class ThresholdRule:
    """How to pick the operating threshold and the tier cut-offs.

    threshold: `max_f1` (default), `target_precision` (the lowest threshold whose validation precision
    reaches `target_precision`), or `top_fraction` (flag the riskiest `top_fraction`).
    tiers: `top_fraction` (high = top `high_fraction`, medium = the next `medium_fraction`) or
    `target_precision` (high / medium = the lowest thresholds reaching `high_precision` / `medium_precision`).
    """

    threshold: str = "max_f1"
    target_precision: float = 0.6
    top_fraction: float = 0.1
    tiers: str = "top_fraction"
    high_fraction: float = 0.1
    medium_fraction: float = 0.2
    high_precision: float = 0.7
    medium_precision: float = 0.5

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> ThresholdRule:
        rule = cls(**dict(cfg or {}))
        if rule.threshold not in ("max_f1", "target_precision", "top_fraction"):
            raise ValueError(
                f"thresholds.threshold must be max_f1, target_precision or top_fraction, "
                f"got {rule.threshold!r}"
            )
        if rule.tiers not in ("top_fraction", "target_precision"):
            raise ValueError(f"thresholds.tiers must be top_fraction or target_precision, got {rule.tiers!r}")
        return rule


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
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if len(probs) == 0:
        return Operating(0.5, 1.0, 0.5, asdict(rule))
    if rule.threshold == "max_f1":
        thr, prec, rec = _precision_curve(probs, labels)
        f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
        threshold = float(thr[int(np.argmax(f1))])
    elif rule.threshold == "target_precision":
        threshold = _lowest_reaching(probs, labels, rule.target_precision)
    else:
        threshold = _top(probs, rule.top_fraction)
    if rule.tiers == "top_fraction":
        high = _top(probs, rule.high_fraction)
        medium = _top(probs, rule.high_fraction + rule.medium_fraction)
    else:
        high = _lowest_reaching(probs, labels, rule.high_precision)
        medium = min(_lowest_reaching(probs, labels, rule.medium_precision), high)
    return Operating(threshold, high, medium, asdict(rule))


def assign_tiers(probs: np.ndarray, op: Operating) -> np.ndarray:
    """'high' / 'medium' / 'low' per probability."""
    probs = np.asarray(probs)
    return np.where(probs >= op.high_cut, TIERS[0], np.where(probs >= op.medium_cut, TIERS[1], TIERS[2]))
