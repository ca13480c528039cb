"""The Pareto/NBD model (Schmittlein, Morrison & Colombo 1987, "Counting your customers: who are they and
what will they do next?", Management Science 33(1)), with the likelihood and expressions of Fader & Hardie
(2005), "A note on deriving the Pareto/NBD model and related expressions".

Assumptions: while alive, a customer buys at rate λ (a Poisson process), λ ~ Gamma(shape r, rate α); their
lifetime is exponential with rate μ, μ ~ Gamma(shape s, rate β), so death can come at any time (BG/NBD: only
right after a purchase); λ and μ are independent across customers. x = repeat purchases, tx = time of the
last one, T = time observed, both from the first purchase.

Numerics. Every expression reduces to tail integrals J(y; m, n) = ∫_y^∞ (α+τ)^-m (β+τ)^-n dτ. The note
writes them with 2F1(r+s+x, s+1; r+s+x+1; z), whose series diverges at z → 1 and which overflows for
frequent buyers, separately for α ≥ β and α < β. Euler's transformation turns each branch into
2F1(1, m; m+n; z) (α ≥ β, z = (α-β)/(α+y)) or 2F1(1, n; m+n; z) (α < β, z = (β-α)/(β+y)): a series of
positive terms, evaluated in log space (with quadrature where scipy's 2F1 fails); differences of two
tails are taken as log-differences.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
from scipy.integrate import quad
from scipy.special import gammaln, hyp2f1

from churnwatch.models.btyd.base import (
    BTYDModel,
    PositiveParams,
    check_histories,
    check_horizon,
    fit_log_parameters,
)


@dataclass(frozen=True)
class ParetoNBDParams(PositiveParams):
    """Pareto/NBD parameters: λ ~ Gamma(shape r, rate alpha), μ ~ Gamma(shape s, rate beta), in 1/time."""

    r: float
    alpha: float
    s: float
    beta: float


def _log_tail(y: np.ndarray, alpha: float, beta: float, m: np.ndarray, n: float) -> np.ndarray:
    """log J(y; m, n) = log ∫_y^∞ (α+τ)^-m (β+τ)^-n dτ, for m + n > 1.

    Substituting u = (α+y)/(α+τ) gives (α+y)^{1-m-n} 2F1(n, m+n-1; m+n; z)/(m+n-1), z = (α-β)/(α+y); Euler's
    transformation makes it (α+y)^-m (β+y)^{1-n} 2F1(1, m; m+n; z)/(m+n-1). For α < β swap the roles.
    """
    y, m = np.broadcast_arrays(np.asarray(y, dtype=np.float64), np.asarray(m, dtype=np.float64))
    if alpha >= beta:
        z = (alpha - beta) / (alpha + y)
        head = -m * np.log(alpha + y) - (n - 1) * np.log(beta + y)
        series = hyp2f1(1.0, m, m + n, z)
    else:
        z = (beta - alpha) / (beta + y)
        head = -n * np.log(beta + y) - (m - 1) * np.log(alpha + y)
        series = hyp2f1(1.0, n, m + n, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = head + np.log(series) - np.log(m + n - 1)
    # The series is >= 1 (positive terms); scipy returns NaN for some large parameters near z = 1
    # (2F1(1, 1e4; 1e4 + 0.2; 0.99)): integrate those few directly.
    failed = np.flatnonzero(~(np.isfinite(series) & (series >= 1)))
    for i in failed:
        out[i] = _log_tail_quadrature(float(y[i]), alpha, beta, float(m[i]), n)
    return out


def _log_tail_quadrature(y: float, alpha: float, beta: float, m: float, n: float) -> float:
    """log J(y; m, n) by adaptive quadrature, the integrand scaled to 1 at y and the variable to its initial
    decay rate κ."""

    def log_integrand(tau: float) -> float:
        return -m * np.log(alpha + tau) - n * np.log(beta + tau)

    kappa = m / (alpha + y) + n / (beta + y)
    start = log_integrand(y)
    rest = quad(lambda v: np.exp(log_integrand(y + v / kappa) - start), 0, np.inf, epsrel=1e-10, limit=200)[0]
    return start + np.log(rest) - np.log(kappa)


def _log_minus(big: np.ndarray, small: np.ndarray) -> np.ndarray:
    """log(e^big - e^small) for big >= small (-inf where they are equal)."""
    with np.errstate(divide="ignore"):
        return big + np.log1p(-np.exp(np.minimum(small - big, 0.0)))


def _log_parts(
    params: ParetoNBDParams, x: np.ndarray, tx: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, ...]:
    """log of the likelihood's 'alive at T' and 'died in (tx, T]' parts, without the common factor
    Γ(r+x) α^r β^s / Γ(r), which the note's eq. (9)-(11) multiplies both by."""
    r, alpha, s, beta = astuple(params)
    alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
    died = np.log(s) + _log_minus(
        _log_tail(tx, alpha, beta, r + x, s + 1), _log_tail(T, alpha, beta, r + x, s + 1)
    )
    return alive, died


def pareto_nbd_log_likelihood(params: ParetoNBDParams, x: Any, tx: Any, T: Any) -> np.ndarray:
    """Per-customer Pareto/NBD log-likelihood of (x repeat purchases, last at tx, observed for T)."""
    x, tx, T = check_histories(x, tx, T)
    r, alpha, s, beta = astuple(params)
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    return common + np.logaddexp(*_log_parts(params, x, tx, T))


def fit_pareto_nbd(x: Any, tx: Any, T: Any, penalizer: float = 0.0) -> ParetoNBDParams:
    """Maximum-likelihood Pareto/NBD parameters (L-BFGS-B on log-parameters, numerical gradient: the
    derivatives of 2F1 in its parameters have no closed form). `penalizer`: a ridge in log-space towards
    the start (r=1, α=mean T, s=1, β=mean T). Raises if there is no data or no convergence."""
    x, tx, T = check_histories(x, tx, T)
    if len(x) == 0:
        raise ValueError("fit_pareto_nbd: no customers to fit")
    scale = max(float(np.mean(T)), 1.0)
    start = np.log([1.0, scale, 1.0, scale])

    def objective(theta: np.ndarray) -> float:
        return -float(np.mean(pareto_nbd_log_likelihood(ParetoNBDParams(*np.exp(theta)), x, tx, T)))

    theta = fit_log_parameters(
        objective, start, ParetoNBDParams.names(), "Pareto/NBD", penalizer, gradient=False
    )
    return ParetoNBDParams(*(float(v) for v in np.exp(theta)))


def pareto_nbd_prob_alive(params: ParetoNBDParams, x: Any, tx: Any, T: Any) -> np.ndarray:
    """P(alive at T | history) (the note's eq. 18): the share of the likelihood in its 'alive' part."""
    alive, died = _log_parts(params, *check_histories(x, tx, T))
    return np.exp(alive - np.logaddexp(alive, died))


def pareto_nbd_prob_no_purchase(
    params: ParetoNBDParams, x: Any, tx: Any, T: Any, horizon: float
) -> np.ndarray:
    """P(no purchase in (T, T + horizon] | history).

    Alive at T with rates (λ, μ), the next event is a purchase before T + t with probability
    λ/(λ+μ) (1 - e^{-(λ+μ)t}) = λ ∫_T^{T+t} e^{-(λ+μ)(τ-T)} dτ; over the prior and the alive part of the
    likelihood this is (r+x) [J(T; r+x+1, s) - J(T+t; r+x+1, s)], divided by the likelihood (both without
    the common factor).
    """
    t = check_horizon(horizon)
    x, tx, T = check_histories(x, tx, T)
    r, alpha, s, beta = astuple(params)
    buys = np.log(r + x) + _log_minus(
        _log_tail(T, alpha, beta, r + x + 1, s), _log_tail(T + t, alpha, beta, r + x + 1, s)
    )
    p_buy = np.exp(buys - np.logaddexp(*_log_parts(params, x, tx, T)))
    return np.clip(1.0 - p_buy, 0.0, 1.0)


def pareto_nbd_expected_purchases(
    params: ParetoNBDParams, x: Any, tx: Any, T: Any, horizon: float
) -> np.ndarray:
    """E[purchases in (T, T + horizon] | history] (the note's eq. 22).

    Given alive at T, λ ~ Gamma(r+x, α+T) and μ ~ Gamma(s, β+T); E[λ] E[(1 - e^{-μt})/μ] =
    (r+x)/(α+T) · (β+T)/(s-1) · [1 - ((β+T)/(β+T+t))^{s-1}], written with expm1 so that s → 1 tends to
    its limit (r+x)/(α+T) (β+T) log(1 + t/(β+T)).
    """
    t = check_horizon(horizon)
    x, tx, T = check_histories(x, tx, T)
    r, alpha, s, beta = astuple(params)
    log_growth = np.log1p(t / (beta + T))
    k = s - 1
    per_rate = log_growth if abs(k) < 1e-12 else -np.expm1(-k * log_growth) / k
    return pareto_nbd_prob_alive(params, x, tx, T) * (r + x) / (alpha + T) * (beta + T) * per_rate


class ParetoNBD(BTYDModel):
    """Pareto/NBD (Schmittlein, Morrison & Colombo 1987), fitted by maximum likelihood; see the module
    docstring."""

    name = "pareto_nbd"

    def _fit(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray, penalizer: float) -> ParetoNBDParams:
        return fit_pareto_nbd(x, tx, T, penalizer)

    def log_likelihood(self, x: Any, tx: Any, T: Any) -> np.ndarray:
        return pareto_nbd_log_likelihood(self._fitted(), x, tx, T)

    def prob_alive(self, x: Any, tx: Any, T: Any) -> np.ndarray:
        return pareto_nbd_prob_alive(self._fitted(), x, tx, T)

    def prob_no_purchase(self, x: Any, tx: Any, T: Any, horizon: float) -> np.ndarray:
        return pareto_nbd_prob_no_purchase(self._fitted(), x, tx, T, horizon)

    def expected_purchases(self, x: Any, tx: Any, T: Any, horizon: float) -> np.ndarray:
        return pareto_nbd_expected_purchases(self._fitted(), x, tx, T, horizon)
