"""The BG/NBD baseline: its likelihood recovers known parameters, its churn probability is calibrated, and
it reads its inputs (first_purchase_days among them) from the aggregate features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import approx_fprime

from churnwatch.data.contract import EventSchema, load_events
from churnwatch.data.snapshots import EventLog, build_snapshot
from churnwatch.features.aggregates import AggregateFeaturizer
from churnwatch.models.btyd import (
    BGNBDParams,
    BTYDClassifier,
    _objective,
    bgnbd_log_likelihood,
    fit_bgnbd,
    prob_no_purchase,
)

from .conftest import SCHEMA_CFG, make_events
from .test_aggregates import ROWS, SPEC, _table

# The CDNOW estimates of Fader, Hardie & Lee (2005), with α converted from weeks to days.
TRUE = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)


def simulate(
    params: BGNBDParams, T: np.ndarray, horizon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD histories from a first purchase at t = 0: (x, tx) observed up to T, and whether the customer
    buys in (T, T + horizon]. Exponential gaps at rate λ; after each repeat purchase death with prob p."""
    n = len(T)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    t, x, tx = np.zeros(n), np.zeros(n), np.zeros(n)
    buys_later = np.zeros(n, dtype=bool)
    active = np.arange(n)
    while len(active):
        t[active] += rng.exponential(1.0, len(active)) / lam[active]
        inside = t[active] <= T[active]
        buys_later[active[~inside & (t[active] <= T[active] + horizon)]] = True
        bought = active[inside]  # the first purchase after T (alive till then) settles buys_later: stop
        x[bought] += 1
        tx[bought] = t[bought]
        active = bought[rng.random(len(bought)) >= p[bought]]
    return x, tx, buys_later


def _relative_errors(fit: BGNBDParams) -> np.ndarray:
    return np.array([fit.r / TRUE.r, fit.alpha / TRUE.alpha, fit.a / TRUE.a, fit.b / TRUE.b]) - 1


def test_maximum_likelihood_recovers_known_parameters():
    # 20k customers observed 20-100 weeks. Over 40 seeds the relative errors had std (r, α, a, b) of about
    # (1.2%, 2.5%, 4.5%, 6.8%); the tolerances are ~4 std. Wrong likelihoods (no A2 term, A2 at T instead
    # of tx, B(a+1, b+x) in A2, A2 also for x = 0) miss a or b by 47% up to a factor of 400.
    rng = np.random.default_rng(0)
    T = rng.uniform(140, 700, 20_000)
    x, tx, _ = simulate(TRUE, T, 0.0, rng)
    fit = fit_bgnbd(x, tx, T)
    errors = _relative_errors(fit)
    assert (np.abs(errors) <= [0.05, 0.10, 0.20, 0.25]).all(), errors
    # the optimum beats the truth on its own data, and the likelihood is the per-customer sum
    assert bgnbd_log_likelihood(fit, x, tx, T).sum() >= bgnbd_log_likelihood(TRUE, x, tx, T).sum()


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    T = rng.uniform(140, 700, 2_000)
    x, tx, _ = simulate(TRUE, T, 0.0, rng)
    theta, theta0 = np.log([0.5, 20.0, 1.2, 3.0]), np.zeros(4)
    _, grad = _objective(theta, x, tx, T, 0.1, theta0)
    numeric = approx_fprime(theta, lambda t: _objective(t, x, tx, T, 0.1, theta0)[0], 1e-7)
    assert grad == pytest.approx(numeric, rel=1e-4, abs=1e-6)


def test_probability_of_no_purchase_is_calibrated():
    # With the true parameters, P(no purchase in (T, T + h]) matches the simulated share overall and in
    # quintiles of the prediction (worst gap over 10 seeds: 0.014; assuming everyone alive: 0.35).
    rng = np.random.default_rng(2)
    T = rng.uniform(140, 700, 20_000)
    horizon = 180.0
    x, tx, buys_later = simulate(TRUE, T, horizon, rng)
    p0 = prob_no_purchase(TRUE, x, tx, T, horizon)
    observed = (~buys_later).astype(float)
    assert p0.mean() == pytest.approx(observed.mean(), abs=0.01)
    bins = np.digitize(p0, np.quantile(p0, [0.2, 0.4, 0.6, 0.8]))
    for k in range(5):
        assert p0[bins == k].mean() == pytest.approx(observed[bins == k].mean(), abs=0.025), k
    # no time, no purchase; longer windows, more purchases; more recent buyers are likelier to buy
    assert prob_no_purchase(TRUE, x, tx, T, 0.0) == pytest.approx(1.0)
    assert (prob_no_purchase(TRUE, x, tx, T, 2 * horizon) <= p0).all()
    recent, stale = prob_no_purchase(TRUE, np.array([3.0, 3.0]), np.array([290.0, 100.0]), [300, 300], 60)
    assert recent < stale


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="no customers"):
        fit_bgnbd(np.zeros(0), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="must not exceed T"):
        fit_bgnbd(np.array([1.0]), np.array([10.0]), np.array([5.0]))
    with pytest.raises(ValueError, match="positive"):
        BGNBDParams(r=0.0, alpha=1.0, a=1.0, b=1.0)


def test_classifier_reads_its_columns_and_gives_churn_probabilities():
    names = ["n_purchase_occasions", "spend_total", "recency_days", "first_purchase_days"]
    rng = np.random.default_rng(3)
    T = rng.uniform(140, 700, 3_000)
    x, tx, _ = simulate(TRUE, T, 0.0, rng)
    X = np.column_stack([x + 1, rng.gamma(2, 20, len(T)), T - tx, T]).astype(np.float32)
    y = rng.integers(0, 2, len(T))
    clf = BTYDClassifier(horizon_days=60, feature_names=names).fit(X, y)
    assert list(clf.classes_) == [0, 1] and clf.params_.r > 0
    proba = clf.predict_proba(X[:5])
    assert proba.shape == (5, 2) and ((proba >= 0) & (proba <= 1)).all()
    assert proba.sum(axis=1) == pytest.approx(1.0)
    expected = prob_no_purchase(clf.params_, x[:5], tx[:5], T[:5], 60)
    assert proba[:, 1] == pytest.approx(expected, rel=1e-5)  # column 1 = churn = no purchase
    same = BTYDClassifier(horizon_days=60).fit(pd.DataFrame(X, columns=names))  # names from a frame
    assert same.params_ == pytest.approx(clf.params_)
    with pytest.raises(ValueError, match="missing"):
        BTYDClassifier(horizon_days=60, feature_names=["a", "b", "c", "d"]).fit(X, y)


def test_first_purchase_days_by_hand_and_classifier_on_real_aggregates():
    rows = [*ROWS, ("c", "2024-03-02", "complaint", None, None)]  # c never bought
    t, _ = _table(rows)
    assert t.loc["a", "first_purchase_days"] == pytest.approx(60)  # 2024-02-01 → 2024-04-01
    assert t.loc["b", "first_purchase_days"] == pytest.approx(181)
    assert t.loc["c", "first_purchase_days"] == pytest.approx(t.loc["c", "tenure_days"]) == pytest.approx(30)
    names = list(t.columns)
    assert names.index("first_purchase_days") == names.index("recency_days") + 1
    clf = BTYDClassifier(horizon_days=30, feature_names=names).fit(t.to_numpy(), None)
    # a: 3 occasions → x = 2, last 5 days ago → tx = 55, T = 60; b: one purchase; c: none (T = tenure)
    expected = prob_no_purchase(clf.params_, [2, 0, 0], [55, 0, 0], [60, 181, 30], 30)
    assert clf.predict_proba(t.to_numpy())[:, 1] == pytest.approx(expected, rel=1e-5)


def test_first_purchase_is_never_more_recent_than_the_last():
    loaded = load_events(
        "e.parquet", EventSchema.from_config(SCHEMA_CFG), frame=make_events(60, seed=4), end_date="2030-01-01"
    )
    log = EventLog.from_frame(loaded.frame)
    for cutoff in ("2024-02-01", "2024-04-01", "2024-07-01"):
        snap = build_snapshot(log, cutoff, horizon_days=None)
        frame = AggregateFeaturizer(SPEC).fit_transform(log, snap).to_frame()
        assert (frame["first_purchase_days"] >= frame["recency_days"]).all()
        assert (frame["first_purchase_days"] <= frame["tenure_days"]).all()
