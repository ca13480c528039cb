"""The Gamma-Gamma model of spend per transaction (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value
curves for customer base analysis", Journal of Marketing Research 42(4); Fader & Hardie 2013, "The
Gamma-Gamma model of monetary value").

Assumptions: a customer's transaction values are i.i.d. Gamma(shape p, rate ν) around their own mean p/ν;
ν ~ Gamma(shape q, rate γ) across customers; and spend is independent of the purchase process (how often
and how long they buy), so it pairs with BG/NBD or Pareto/NBD. The mean m of n transactions is then
Gamma(pn, νn), and its marginal likelihood and E[mean spend | n, m] have closed forms.
"""

from __future__ import annotations

import logging
from dataclasses import astuple, dataclass
from typing import Any, Self

import numpy as np
from scipy.special import digamma, gammaln

from churnwatch.models.btyd.base import PositiveParams, fit_log_parameters

log = logging.getLogger(__name__)

DEPENDENCE_WARNING = 0.3
"""|corr(n, m)| above which `fit` warns that the independence assumption looks wrong (CDNOW: 0.11)."""


@dataclass(frozen=True)
class GammaGammaParams(PositiveParams):
    """Gamma-Gamma parameters: transaction value ~ Gamma(p, ν), ν ~ Gamma(shape q, rate gamma)."""

    p: float
    q: float
    gamma: float


def _check_spend(n: Any, m: Any) -> tuple[np.ndarray, np.ndarray]:
    n, m = np.asarray(n, dtype=np.float64), np.asarray(m, dtype=np.float64)
    if n.shape != m.shape or n.ndim != 1:
        raise ValueError(f"n and m must be 1-d arrays of one length, got {n.shape}, {m.shape}")
    if not (np.isfinite(n).all() and np.isfinite(m).all()) or (n < 1).any() or (m < 0).any():
        raise ValueError("n must be >= 1 transactions and m a finite mean value >= 0")
    return n, m


def gamma_gamma_log_likelihood(params: GammaGammaParams, n: Any, m: Any) -> np.ndarray:
    """Per-customer log-likelihood of the mean value m (> 0) of n transactions (the 2013 note's eq. 3)."""
    n, m = _check_spend(n, m)
    p, q, gamma = astuple(params)
    return (
        gammaln(p * n + q)
        - gammaln(p * n)
        - gammaln(q)
        + q * np.log(gamma)
        + (p * n - 1) * np.log(m)
        + p * n * np.log(n)
        - (p * n + q) * np.log(gamma + n * m)
    )


def _objective(theta: np.ndarray, n: np.ndarray, m: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood and its gradient in θ = log-parameters."""
    params = GammaGammaParams(*np.exp(theta))
    p, q, gamma = astuple(params)
    ll = gamma_gamma_log_likelihood(params, n, m)
    both = digamma(p * n + q)
    g_p = n * (both - digamma(p * n) + np.log(m) + np.log(n) - np.log(gamma + n * m))
    g_q = both - digamma(q) + np.log(gamma) - np.log(gamma + n * m)
    g_gamma = q / gamma - (p * n + q) / (gamma + n * m)
    grad = -np.array([g_p.mean(), g_q.mean(), g_gamma.mean()])
    return -float(ll.mean()), grad * np.array([p, q, gamma])


class GammaGamma:
    """Gamma-Gamma spend model, fitted like lifetimes' fitters: `fit(n, m)` returns the model, the estimates
    are in `params_`. n = number of transactions, m = their mean value, per customer."""

    def fit(self, n: Any, m: Any) -> Self:
        """Maximum-likelihood (p, q, γ) on the customers given (each needs m > 0).

        Warns if |corr(n, m)| exceeds DEPENDENCE_WARNING: the model assumes spend does not depend on
        frequency. Fader & Hardie fit it on customers with x >= 1 repeat purchases and their repeat mean.
        """
        n, m = _check_spend(n, m)
        if len(n) < 2 or (m <= 0).any():
            raise ValueError("Gamma-Gamma fit needs at least 2 customers, each with a mean value m > 0")
        corr = float(np.corrcoef(n, m)[0, 1]) if np.ptp(n) > 0 and np.ptp(m) > 0 else 0.0
        if abs(corr) > DEPENDENCE_WARNING:
            log.warning(
                "Gamma-Gamma: corr(transactions, mean value) = %.2f; the model assumes spend is independent "
                "of purchase frequency, so its spend forecasts may be biased",
                corr,
            )
        start = np.log([1.0, 2.0, float(np.mean(m))])  # population mean pγ/(q-1) = the sample mean
        theta = fit_log_parameters(
            lambda t: _objective(t, n, m), start, GammaGammaParams.names(), "Gamma-Gamma"
        )
        self.params_ = GammaGammaParams(*(float(v) for v in np.exp(theta)))
        self.correlation_ = corr
        log.info("Gamma-Gamma fit on %d customers: %s (corr(n, m) = %.2f)", len(n), self.params_, corr)
        return self

    def _fitted(self) -> GammaGammaParams:
        params = getattr(self, "params_", None)
        if params is None:
            raise RuntimeError("GammaGamma is not fitted: call fit first")
        return params

    def log_likelihood(self, n: Any, m: Any) -> np.ndarray:
        return gamma_gamma_log_likelihood(self._fitted(), n, m)

    def mean_spend(self) -> float:
        return gamma_gamma_mean_spend(self._fitted())

    def conditional_expected_spend(self, n: Any, m: Any) -> np.ndarray:
        return gamma_gamma_expected_spend(self._fitted(), n, m)


def gamma_gamma_mean_spend(params: GammaGammaParams) -> float:
    """The population mean transaction value E[p/ν] = pγ/(q-1): the forecast for customers without a
    (repeat) transaction. Infinite spend variance across customers (q <= 1) leaves it undefined."""
    p, q, gamma = astuple(params)
    if q <= 1:
        raise ValueError(f"Gamma-Gamma q = {q:.3g} <= 1: the population mean spend is infinite")
    return p * gamma / (q - 1)


def gamma_gamma_expected_spend(params: GammaGammaParams, n: Any, m: Any) -> np.ndarray:
    """E[mean transaction value | n transactions of mean m] = p(γ + nm)/(pn + q - 1) (the 2013 note's eq. 5):
    a weighted average of the population mean and the customer's own mean m, which gains weight with n.
    Infinite where pn + q <= 1 (the posterior of ν leaves E[1/ν] undefined)."""
    n, m = _check_spend(n, m)
    p, q, gamma = astuple(params)
    shape = p * n + q - 1
    with np.errstate(divide="ignore"):
        return np.where(shape > 0, p * (gamma + n * m) / np.maximum(shape, 0.0), np.inf)
