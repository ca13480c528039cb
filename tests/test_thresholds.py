"""Operating threshold and tier rules on validation predictions."""

from __future__ import annotations

import numpy as np
import pytest

from churnwatch.models.thresholds import ThresholdRule, assign_tiers, choose_operating_point


def _data(n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(float)
    probs = np.clip(0.3 + 0.35 * (labels - 0.3) + rng.normal(0, 0.2, n), 0, 1)
    return probs, labels


def test_default_tiers_are_top_10_and_next_20_percent():
    probs, labels = _data()
    op = choose_operating_point(probs, labels, ThresholdRule())
    tiers = assign_tiers(probs, op)
    assert np.mean(tiers == "high") == pytest.approx(0.1, abs=0.002)
    assert np.mean(tiers == "medium") == pytest.approx(0.2, abs=0.002)


def test_max_f1_threshold_beats_neighbours():
    probs, labels = _data()
    op = choose_operating_point(probs, labels, ThresholdRule(threshold="max_f1"))

    def f1(t):
        pred = probs >= t
        tp = (pred & (labels == 1)).sum()
        return 2 * tp / (pred.sum() + labels.sum())

    assert f1(op.threshold) >= max(f1(op.threshold - 0.05), f1(op.threshold + 0.05))


def test_target_precision_rules_reach_their_precision():
    probs, labels = _data()
    rule = ThresholdRule(
        threshold="target_precision",
        target_precision=0.7,
        tiers="target_precision",
        high_precision=0.8,
        medium_precision=0.6,
    )
    op = choose_operating_point(probs, labels, rule)
    assert labels[probs >= op.threshold].mean() >= 0.7
    assert labels[probs >= op.high_cut].mean() >= 0.8
    assert op.medium_cut <= op.high_cut
    assert labels[probs >= op.medium_cut].mean() >= 0.6


def test_bad_rule_is_rejected():
    with pytest.raises(ValueError, match="thresholds.threshold"):
        ThresholdRule.from_config({"threshold": "magic"})


def test_lift_and_capture_in_the_top_decile_by_hand():
    from churnwatch.evaluation import top_fraction_metrics

    probs = np.linspace(1, 0, 20)  # 20 customers, riskiest first
    labels = np.zeros(20)
    labels[[0, 5, 12, 19]] = 1  # 4 churners, base rate 0.2; one of them in the top 2
    out = top_fraction_metrics(probs, labels, 0.1)
    assert out["capture_top10"] == pytest.approx(0.25)
    assert out["lift_top10"] == pytest.approx(0.5 / 0.2)
