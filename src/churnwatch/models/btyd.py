"""BTYD baseline: the BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

A classical, label-free yardstick for the learned models: from each customer's purchase history alone
(repeat occasions x, time of the last one tx, time since the first one T) it gives the probability of no
purchase within the label horizon. While alive a customer buys at rate λ ~ Gamma(r, rate α); after each
repeat purchase they die with probability p ~ Beta(a, b). No maintained BTYD library installs cleanly
(lifetimes is archived, pymc-marketing is far too heavy), so the published likelihood is implemented here
with numpy and scipy and fitted by maximum likelihood.

`model=btyd` (conf/model/btyd.yaml) plugs it into the tabular pipeline as `BTYDClassifier`, reading x, tx
and T from the aggregate features. All times are in days.
"""

from __future__ import annotations

import logging
from dataclasses import astuple, dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

log = logging.getLogger(__name__)

# Columns of the aggregate table the classifier reads (src/churnwatch/features/aggregates.py).
OCCASIONS, RECENCY, FIRST_PURCHASE = "n_purchase_occasions", "recency_days", "first_purchase_days"
_LOG_BOUNDS = (-15.0, 15.0)  # on log-parameters: keeps the optimiser away from overflow


@dataclass(frozen=True)
class BGNBDParams:
    """BG/NBD parameters: λ ~ Gamma(shape r, rate alpha) in 1/days; p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        if not all(np.isfinite(v) and v > 0 for v in astuple(self)):
            raise ValueError(f"BG/NBD parameters must be positive and finite, got {self}")


def _check_data(x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, tx, T = (np.asarray(v, dtype=np.float64) for v in (x, tx, T))
    if not x.shape == tx.shape == T.shape or x.ndim != 1:
        raise ValueError(f"x, tx, T must be 1-d arrays of one length, got {x.shape}, {tx.shape}, {T.shape}")
    if not (np.isfinite(x).all() and np.isfinite(tx).all() and np.isfinite(T).all()):
        raise ValueError("x, tx, T must be finite")
    if (x < 0).any() or (tx < 0).any() or (T < 0).any():
        raise ValueError("x, tx, T must be non-negative")
    if (tx > T * (1 + 1e-9) + 1e-9).any():
        raise ValueError("tx (last purchase) must not exceed T (time observed since the first purchase)")
    return x, np.minimum(tx, T), T


def _terms(
    params: BGNBDParams, x: np.ndarray, tx: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """log of the 'still alive at T' (A1) and 'died after the last purchase' (A2) likelihood terms."""
    r, alpha, a, b = astuple(params)
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
    a1 = common + betaln(a, b + x) - (r + x) * np.log(alpha + T)
    xs = np.maximum(x, 1.0)  # A2 exists only for x > 0; evaluate it safely everywhere, then mask
    a2 = np.where(x > 0, common + betaln(a + 1, b + xs - 1) - (r + x) * np.log(alpha + tx), -np.inf)
    return a1, a2


def bgnbd_log_likelihood(params: BGNBDParams, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood of (x repeat occasions, last at tx, observed for T days)."""
    x, tx, T = _check_data(x, tx, T)
    a1, a2 = _terms(params, x, tx, T)
    return np.logaddexp(a1, a2)


def _objective(
    theta: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray, penalizer: float, theta0: np.ndarray
) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood (plus penalizer * |θ - θ0|²) and its gradient in θ = log-parameters."""
    r, alpha, a, b = np.exp(theta)
    params = BGNBDParams(r, alpha, a, b)
    a1, a2 = _terms(params, x, tx, T)
    ll = np.logaddexp(a1, a2)
    w1, w2 = np.exp(a1 - ll), np.exp(a2 - ll)  # posterior weights of the two terms (w2 = 0 when x = 0)
    xs = np.maximum(x, 1.0)
    d_r_common = digamma(r + x) - digamma(r) + np.log(alpha)
    d_a_common = digamma(a + b) - digamma(a)
    d_b_common = digamma(a + b) - digamma(b)
    # d/dparam of A1 and A2 (A2's derivatives are weighted by w2, which is 0 where x = 0).
    g_r = w1 * (d_r_common - np.log(alpha + T)) + w2 * (d_r_common - np.log(alpha + tx))
    g_alpha = r / alpha - w1 * (r + x) / (alpha + T) - w2 * (r + x) / (alpha + tx)
    g_a = w1 * (d_a_common + digamma(a) - digamma(a + b + x)) + w2 * (
        d_a_common + digamma(a + 1) - digamma(a + b + x)
    )
    g_b = w1 * (d_b_common + digamma(b + x) - digamma(a + b + x)) + w2 * (
        d_b_common + digamma(b + xs - 1) - digamma(a + b + x)
    )
    nat = np.array([r, alpha, a, b])
    grad_nat = -np.array([g_r.mean(), g_alpha.mean(), g_a.mean(), g_b.mean()])
    value = -float(ll.mean()) + penalizer * float(np.sum((theta - theta0) ** 2))
    return value, grad_nat * nat + 2 * penalizer * (theta - theta0)  # chain rule: d/dlog(θ) = θ · d/dθ


def fit_bgnbd(x: np.ndarray, tx: np.ndarray, T: np.ndarray, penalizer: float = 0.0) -> BGNBDParams:
    """Maximum-likelihood BG/NBD parameters (L-BFGS-B on log-parameters, analytic gradient).

    `penalizer` adds penalizer * Σ (log θ - log θ0)² to the mean negative log-likelihood, a ridge in
    log-space towards the start θ0 = (r=1, α=mean T, a=1, b=1). Unlike lifetimes' penalty on the raw
    parameters it does not depend on the time unit; it keeps a, b from running off on data that barely
    identifies them. Raises if there is no data or the optimiser does not converge.
    """
    x, tx, T = _check_data(x, tx, T)
    if len(x) == 0:
        raise ValueError("fit_bgnbd: no customers to fit")
    if penalizer < 0:
        raise ValueError(f"penalizer must be >= 0, got {penalizer}")
    start = np.log([1.0, max(float(np.mean(T)), 1.0), 1.0, 1.0])
    theta, result = start, None
    for _ in range(3):  # restart from where it stopped: L-BFGS-B's line search can stall near the optimum
        result = minimize(
            _objective,
            theta,
            args=(x, tx, T, penalizer, start),
            jac=True,
            method="L-BFGS-B",
            bounds=[_LOG_BOUNDS] * 4,
            options={"maxiter": 2000},
        )
        theta = result.x
        if result.success:
            break
    if not np.isfinite(result.fun) or not (result.success or np.max(np.abs(result.jac)) < 1e-5):
        raise RuntimeError(f"BG/NBD fit did not converge: {result.message} (log-parameters {theta})")
    at_bound = np.isclose(theta, _LOG_BOUNDS[0]) | np.isclose(theta, _LOG_BOUNDS[1])
    if at_bound.any():
        log.warning(
            "BG/NBD fit: %s at the bound of the search range; consider model.params.penalizer > 0",
            [n for n, hit in zip(("r", "alpha", "a", "b"), at_bound, strict=True) if hit],
        )
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    return BGNBDParams(r, alpha, a, b)


def prob_no_purchase(
    params: BGNBDParams, x: np.ndarray, tx: np.ndarray, T: np.ndarray, horizon: float
) -> np.ndarray:
    """P(no purchase in (T, T + horizon] | history): the churn probability for a label horizon.

    Alive at T, a customer makes none with probability e^{-λ·horizon}; a dead one never buys again. Over
    the posterior this is the likelihood with α + T replaced by α + T + horizon in the alive term, divided
    by the likelihood.
    """
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    x, tx, T = _check_data(x, tx, T)
    a1, a2 = _terms(params, x, tx, T)
    a1_later, _ = _terms(params, x, tx, T + horizon)
    return np.clip(np.exp(np.logaddexp(a1_later, a2) - np.logaddexp(a1, a2)), 0.0, 1.0)


class BTYDClassifier(ClassifierMixin, BaseEstimator):
    """BG/NBD as a scikit-learn classifier on the aggregate features; class 1 = no purchase in the horizon.

    Reads x = max(n_purchase_occasions - 1, 0), T = first_purchase_days, tx = max(T - recency_days, 0)
    from the columns named in `feature_names` (or a DataFrame's columns). Customers who never bought get
    x = 0, tx = 0 and T = first_purchase_days, which the featurizer fills with their tenure: they count as
    one-time buyers whose first purchase was their first event. `fit` is unsupervised: it fits the BG/NBD
    parameters (`params_`) to the training histories; y only sets `classes_` = [0, 1].
    """

    def __init__(self, horizon_days: float, feature_names: list[str] | None = None, penalizer: float = 0.0):
        self.horizon_days = horizon_days
        self.feature_names = feature_names
        self.penalizer = penalizer

    def _histories(self, X: np.ndarray | pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        names = list(X.columns) if isinstance(X, pd.DataFrame) else self.feature_names
        if names is None:
            raise ValueError("BTYDClassifier needs feature_names (or a DataFrame) to find its columns")
        missing = [c for c in (OCCASIONS, RECENCY, FIRST_PURCHASE) if c not in names]
        if missing:
            raise ValueError(f"BTYDClassifier: feature columns {missing} are missing")
        values = np.asarray(X, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(names):
            raise ValueError(f"expected a 2-d matrix with {len(names)} columns, got shape {values.shape}")
        column = {name: values[:, names.index(name)] for name in (OCCASIONS, RECENCY, FIRST_PURCHASE)}
        x = np.maximum(column[OCCASIONS] - 1, 0.0)
        T = np.maximum(column[FIRST_PURCHASE], 0.0)
        tx = np.clip(T - column[RECENCY], 0.0, T)
        return x, tx, T

    def fit(self, X: np.ndarray | pd.DataFrame, y: np.ndarray | None = None) -> BTYDClassifier:
        """Fit the BG/NBD parameters on the rows' purchase histories (labels are not used)."""
        self.params_ = fit_bgnbd(*self._histories(X), penalizer=float(self.penalizer))
        self.classes_ = np.array([0, 1])
        log.info("BG/NBD fit: %s", self.params_)
        return self

    def predict_proba(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Columns [P(purchase in the horizon), P(no purchase in the horizon)]."""
        check_is_fitted(self, "params_")
        p0 = prob_no_purchase(self.params_, *self._histories(X), float(self.horizon_days))
        return np.column_stack([1.0 - p0, p0])

    def predict(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]
