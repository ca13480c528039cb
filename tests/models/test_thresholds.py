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
    from churnwatch.models.metrics import top_fraction_metrics

    probs = np.linspace(1, 0, 20)  # 20 customers, riskiest first
    labels = np.zeros(20)
    labels[[0, 5, 12, 19]] = 1  # 4 churners, base rate 0.2; one of them in the top 2
    out = top_fraction_metrics(probs, labels, 0.1)
    assert out["capture_top10"] == pytest.approx(0.25)
    assert out["lift_top10"] == pytest.approx(0.5 / 0.2)


def test_top_k_fills_the_tiers_by_rank_in_any_population():
    probs, labels = _data()
    rule = ThresholdRule(tiers="top_k", high_k=50, medium_k=150, population=4000)
    op = choose_operating_point(probs, labels, rule)
    # on validation (2000 of a 4000-customer run) the cut-offs hold the same shares: 25 and 75 customers
    by_cut = assign_tiers(probs, op, by_capacity=False)
    assert abs((by_cut == "high").sum() - 25) <= 1 and abs((by_cut == "medium").sum() - 75) <= 1
    # at scoring, exactly high_k and medium_k customers, the riskiest first, whatever their probabilities
    today = np.clip(probs + 0.3, 0, 1)[:700]
    tiers = assign_tiers(today, op)
    assert (tiers == "high").sum() == 50 and (tiers == "medium").sum() == 150
    order = np.argsort(-today, kind="stable")
    assert (tiers[order[:50]] == "high").all()


def test_fixed_cut_offs_let_tier_sizes_follow_the_risk():
    probs, labels = _data()
    op = choose_operating_point(
        probs, labels, ThresholdRule(tiers="fixed", high_probability=0.6, medium_probability=0.4)
    )
    assert (op.high_cut, op.medium_cut) == (0.6, 0.4)
    tiers = assign_tiers(np.array([0.7, 0.5, 0.1, 0.6, 0.4]), op)
    assert tiers.tolist() == ["high", "medium", "low", "high", "medium"]
    riskier = assign_tiers(np.clip(probs + 0.2, 0, 1), op)
    assert (riskier == "high").sum() > (assign_tiers(probs, op) == "high").sum()
    with pytest.raises(ValueError, match="high_probability"):
        ThresholdRule.from_config({"tiers": "fixed", "high_probability": 0.2, "medium_probability": 0.5})
    with pytest.raises(ValueError, match="unknown keys"):
        ThresholdRule.from_config({"tier": "fixed"})


def test_tier_table_counts_precision_and_recall_per_tier():
    from churnwatch.models.thresholds import tier_table

    probs = np.array([0.9, 0.8, 0.6, 0.5, 0.2, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0])
    op = choose_operating_point(
        probs, labels, ThresholdRule(tiers="fixed", high_probability=0.75, medium_probability=0.45)
    )
    table = {row["tier"]: row for row in tier_table(probs, labels, op)}
    assert (table["high"]["customers"], table["high"]["precision"]) == (2, 0.5)
    assert table["medium"]["recall"] == pytest.approx(2 / 3)
    assert table["medium"]["cumulative_recall"] == pytest.approx(1.0)
    assert table["low"]["churners"] == 0
