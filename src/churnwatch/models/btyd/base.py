"""What the BTYD models share: checked (x, tx, T) histories, positive parameters and a maximum-likelihood
fit on log-parameters.

A history is (x repeat purchase occasions, the last at tx, observed for T since the first), all times in
one unit (days in churnwatch; the papers' CDNOW examples use weeks: only the rate parameters change).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any, Self

import numpy as np
from scipy.optimize import minimize

log = logging.getLogger(__name__)

LOG_BOUNDS = (-15.0, 15.0)
"""Search range of every log-parameter: keeps the optimiser away from overflow."""


@dataclass(frozen=True)
class PositiveParams:
    """Base of the parameter records: every field a positive, finite float."""

    def __post_init__(self) -> None:
        if not all(np.isfinite(v) and v > 0 for v in astuple(self)):
            raise ValueError(f"{type(self).__name__} parameters must be positive and finite, got {self}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_histories(x: Any, tx: Any, T: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, tx, T) as float64 1-d arrays of one length, finite, non-negative, with tx <= T."""
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


def check_horizon(horizon: float) -> float:
    if not horizon >= 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    return float(horizon)


def fit_log_parameters(
    objective: Callable[[np.ndarray], Any],
    start: np.ndarray,
    names: Sequence[str],
    model: str,
    penalizer: float = 0.0,
    gradient: bool = True,
) -> np.ndarray:
    """Minimise objective(θ) + penalizer · |θ - start|² over log-parameters θ with L-BFGS-B; the optimum.

    `objective` is a mean negative log-likelihood, returning (value, gradient) when `gradient`, else the
    value alone (then scipy differentiates numerically). The ridge towards the start keeps weakly
    identified parameters from running off; unlike a penalty on the raw parameters it does not depend on
    the time unit. Raises if the optimiser does not converge; warns when a parameter sits on the bounds.
    """
    if penalizer < 0:
        raise ValueError(f"penalizer must be >= 0, got {penalizer}")

    def penalised(theta: np.ndarray) -> Any:
        ridge = penalizer * float(np.sum((theta - start) ** 2))
        if not gradient:
            return objective(theta) + ridge
        value, grad = objective(theta)
        return value + ridge, grad + 2 * penalizer * (theta - start)

    theta, result = start, None
    for _ in range(3):  # restart from where it stopped: L-BFGS-B's line search can stall near the optimum
        result = minimize(
            penalised,
            theta,
            jac=gradient or None,
            method="L-BFGS-B",
            bounds=[LOG_BOUNDS] * len(start),
            options={"maxiter": 2000},
        )
        theta = result.x
        if result.success:
            break
    stalled_at_optimum = result.jac is not None and np.max(np.abs(result.jac)) < 1e-5
    if not np.isfinite(result.fun) or not (result.success or stalled_at_optimum):
        raise RuntimeError(f"{model} fit did not converge: {result.message} (log-parameters {theta})")
    at_bound = np.isclose(theta, LOG_BOUNDS[0]) | np.isclose(theta, LOG_BOUNDS[1])
    if at_bound.any():
        log.warning(
            "%s fit: %s at the bound of the search range; consider model.params.penalizer > 0",
            model,
            [n for n, hit in zip(names, at_bound, strict=True) if hit],
        )
    return theta


class BTYDModel(ABC):
    """A purchase-count model of the BTYD family, fitted like lifetimes' fitters: `fit` returns the model,
    the estimates are in `params_`. Every method takes histories (x, tx, T) and, where it looks ahead, a
    horizon t: the window (T, T + t] right after each customer's observation period."""

    name: str
    """How configs and logs call the model."""

    def __init__(self, penalizer: float = 0.0):
        self.penalizer = penalizer

    def fit(self, x: Any, tx: Any, T: Any) -> Self:
        """Maximum-likelihood parameters for these histories (`params_`)."""
        self.params_ = self._fit(*check_histories(x, tx, T), float(self.penalizer))
        log.info("%s fit on %d customers: %s", self.name, len(np.asarray(x)), self.params_)
        return self

    def _fitted(self) -> Any:
        params = getattr(self, "params_", None)
        if params is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit first")
        return params

    @abstractmethod
    def _fit(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray, penalizer: float) -> PositiveParams: ...

    @abstractmethod
    def log_likelihood(self, x: Any, tx: Any, T: Any) -> np.ndarray:
        """Per-customer log-likelihood of the histories."""

    @abstractmethod
    def prob_alive(self, x: Any, tx: Any, T: Any) -> np.ndarray:
        """P(still alive at T | history)."""

    @abstractmethod
    def prob_no_purchase(self, x: Any, tx: Any, T: Any, horizon: float) -> np.ndarray:
        """P(no purchase in (T, T + horizon] | history): the churn probability for a label horizon."""

    @abstractmethod
    def expected_purchases(self, x: Any, tx: Any, T: Any, horizon: float) -> np.ndarray:
        """E[number of purchases in (T, T + horizon] | history]."""
