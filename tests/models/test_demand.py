"""Demand forecasts: what really followed a cutoff, counted as the aggregates count, the forecasts built from
the BTYD models, and the metrics that compare them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from churnwatch.data.snapshots import EventLog, Snapshots, build_snapshot
from churnwatch.features.aggregates import AggregateFeaturizer
from churnwatch.models.btyd import GammaGamma, GammaGammaParams, purchase_histories
from churnwatch.models.demand import (
    expected_purchases,
    expected_spend,
    fit_demand,
    forecast_metrics,
    realised_demand,
    spend_per_occasion,
)
from tests.helpers import AGGREGATE_SPEC, CDNOW_BGNBD, SCHEMA_CFG, make_events, simulate_bgnbd, worst_z


def _log(rows_or_frame) -> EventLog:
    frame = (
        rows_or_frame
        if isinstance(rows_or_frame, pd.DataFrame)
        else pd.DataFrame(rows_or_frame, columns=["cid", "ts", "kind", "cat", "amount"])
    )
    loaded = load_events("e.csv", EventSchema.from_config(SCHEMA_CFG), frame=frame, end_date="2030-01-01")
    return EventLog.from_frame(loaded.frame)


def test_realised_demand_by_hand():
    log = _log(
        [
            ("a", "2024-03-01", "purchase", "x", 10.0),  # before both cutoffs
            ("a", "2024-04-10 09:00", "purchase", "x", 5.0),  # one occasion of two lines...
            ("a", "2024-04-10 09:00", "purchase", "y", 7.0),
            ("a", "2024-04-12", "complaint", None, None),  # ... not a purchase
            ("a", "2024-05-20", "purchase", "y", 3.0),
            ("a", "2024-06-05", "purchase", "y", 4.0),  # after the first window, in the second
            ("b", "2024-03-15", "purchase", "z", 50.0),  # nothing after
        ]
    )
    snaps = Snapshots.concat(
        [build_snapshot(log, "2024-04-01", None), build_snapshot(log, "2024-05-01", None)]
    )
    out = realised_demand(log, snaps, 60, AGGREGATE_SPEC)
    # rows: (a, 04-01), (b, 04-01), (a, 05-01), (b, 05-01); windows [04-01, 05-31) and [05-01, 06-30)
    assert list(snaps.customer_ids(log)) == ["a", "b", "a", "b"]
    assert out["purchases"].tolist() == [2, 0, 2, 0]  # 04-10 (one occasion) and 05-20; then 05-20, 06-05
    assert out["spend"].tolist() == pytest.approx([15.0, 0.0, 7.0, 0.0])


def test_realised_demand_is_what_the_aggregates_add_up_to_by_the_later_cutoff():
    # Occasions and spend in [c1, c2) are the growth of n_purchase_occasions and spend_total from c1 to c2,
    # and "no purchase in the window" is the churn label with purchases as the label events.
    log = _log(make_events(80, seed=7))
    first, second = build_snapshot(log, "2024-04-01", None), build_snapshot(log, "2024-05-16", None)
    featurizer = AggregateFeaturizer(AGGREGATE_SPEC).fit(log, first)
    before = featurizer.transform(log, first).to_frame().set_index(first.customer_ids(log))
    after = featurizer.transform(log, second).to_frame().set_index(second.customer_ids(log))
    out = realised_demand(log, first, 45, AGGREGATE_SPEC).set_index(first.customer_ids(log))
    growth = after.loc[before.index] - before
    assert out["purchases"].to_numpy() == pytest.approx(growth["n_purchase_occasions"].to_numpy())
    assert out["spend"].to_numpy() == pytest.approx(growth["spend_total"].to_numpy(), rel=1e-5)
    assert (out["purchases"] > 0).any() and (out["purchases"] == 0).any()
    purchases = (log.frame["kind"] == "purchase").to_numpy()
    labelled = build_snapshot(log, "2024-04-01", 45, label_events=purchases)
    assert (labelled.label == (out["purchases"].to_numpy() == 0)).all()


def _aggregates(
    n: int, seed: int, spend: GammaGammaParams, horizon: float
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Aggregate columns of BG/NBD histories (CDNOW_BGNBD) whose every transaction is Gamma(p, ν),
    ν ~ Gamma(q, γ), and the purchases and spend that follow in the horizon."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(140, 700, n)
    x, tx, _, later = simulate_bgnbd(CDNOW_BGNBD, T, horizon, rng)
    nu = rng.gamma(spend.q, 1.0 / spend.gamma, n)
    occasions = x + 1
    frame = pd.DataFrame(
        {
            "n_purchase_occasions": occasions,
            "recency_days": T - tx,
            "first_purchase_days": T,
            "spend_total": rng.gamma(spend.p * occasions, 1.0 / nu),  # a sum of Gamma(p, ν) draws
        }
    )
    later_spend = np.where(later > 0, rng.gamma(spend.p * np.maximum(later, 1), 1.0 / nu), 0.0)
    return frame, later, later_spend


def test_forecasts_match_what_follows_on_data_from_the_models():
    # 20k customers from BG/NBD with Gamma-Gamma spend: fitted on their histories, the forecasts of purchases
    # and of spend in the next 90 days match the simulated outcomes overall and in quintiles of the forecast
    # (within 4.5 standard errors of the outcome's mean; over 15 seeds the worst was 2.9).
    spend = GammaGammaParams(p=3.0, q=4.0, gamma=90.0)
    frame, later, later_spend = _aggregates(20_000, seed=11, spend=spend, horizon=90.0)
    counts, spend_model = fit_demand(frame)
    purchases = expected_purchases(counts, frame, 90.0)
    money = expected_spend(counts, spend_model, frame, 90.0)
    assert worst_z(purchases, later) < 4.5
    assert worst_z(money, later_spend) < 4.5
    metrics = forecast_metrics(money, later_spend)
    assert metrics["spearman"] > 0.3 and metrics["mean_expected"] == pytest.approx(
        later_spend.mean(), rel=0.1
    )
    # the pieces: the count model on the histories, Gamma-Gamma on repeat buyers, the population mean
    # for one-time buyers
    assert purchases == pytest.approx(counts.expected_purchases(*purchase_histories(frame), 90.0))
    n, m = spend_per_occasion(frame)
    repeat = n >= 2
    assert spend_model.params_ == GammaGamma().fit(n[repeat], m[repeat]).params_
    per_purchase = np.where(repeat, spend_model.conditional_expected_spend(n, m), spend_model.mean_spend())
    assert money == pytest.approx(purchases * per_purchase)


def test_pareto_nbd_demand_and_rows_without_spend():
    frame, _, _ = _aggregates(3_000, seed=12, spend=GammaGammaParams(3.0, 4.0, 90.0), horizon=0.0)
    frame.loc[:9, "spend_total"] = 0.0  # zero-amount purchases: left out of the spend fit, still forecast
    counts, spend_model = fit_demand(frame, model="pareto_nbd")
    assert counts.name == "pareto_nbd"
    money = expected_spend(counts, spend_model, frame, 30.0)
    assert np.isfinite(money).all() and (money >= 0).all()
    with pytest.raises(ValueError, match="spend_total"):
        fit_demand(frame.drop(columns="spend_total"))


def test_forecast_metrics_by_hand():
    expected, realised = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 2.0, 1.0, 5.0])
    m = forecast_metrics(expected, realised, bins=2)
    assert m["customers"] == 4
    assert m["mae"] == pytest.approx((0 + 1 + 1 + 2) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((0 + 1 + 1 + 4) / 4))
    assert m["spearman"] == pytest.approx(1 - 6 * (0 + 1 + 1 + 0) / (4 * (16 - 1)))  # ranks 1234 vs 1324
    assert (m["mean_expected"], m["mean_realised"]) == pytest.approx((1.5, 2.0))
    table = m["deciles"]
    assert table["customers"].tolist() == [2, 2]
    assert table["mean_expected"].tolist() == pytest.approx([0.5, 2.5])
    assert table["mean_realised"].tolist() == pytest.approx([1.0, 3.0])
    # ties cannot empty a group; a constant forecast has no rank correlation
    flat = forecast_metrics(np.zeros(25), np.arange(25.0))
    assert flat["deciles"]["customers"].sum() == 25 and len(flat["deciles"]) == 10
    assert np.isnan(flat["spearman"])
    with pytest.raises(ValueError, match="one length"):
        forecast_metrics([1.0, 2.0], [1.0])
