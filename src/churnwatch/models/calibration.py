"""Probability calibration, fitted on validation predictions, so `churn_probability` means what it says.

A network trained with a class weight (`pos_weight`) over-states risk by exactly that weight's log-odds;
temperature scaling first removes that known shift, then fits one temperature. Platt scaling fits a slope
and an intercept on the logit; isotonic regression fits a monotone step map (baselines, where the ranking
may tie). Every calibrator maps probabilities, round-trips through JSON, and scripts to TorchScript
(`CalibrationLayer`) so the exported model applies the same map.

The fitting libraries (scipy, scikit-learn, torchmetrics) are imported where they fit: loading a model file
reads a calibrator's state and builds its layer, and scoring should not pay seconds of imports for fits it
never runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from churnwatch.errors import ConfigError

METHODS = ("none", "temperature", "platt", "isotonic")
EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


@dataclass(frozen=True)
class Calibrator:
    """p → sigmoid(slope · logit(p) + intercept), then (isotonic) a monotone piecewise-linear map.

    The identity is slope 1, intercept 0 and no knots. Temperature T with prior shift s is
    slope 1/T, intercept -s/T.
    """

    method: str = "none"
    slope: float = 1.0
    intercept: float = 0.0
    knots_x: tuple[float, ...] = field(default=())
    knots_y: tuple[float, ...] = field(default=())

    @classmethod
    def fit(
        cls, method: str, probs: np.ndarray, labels: np.ndarray, prior_shift: float = 0.0
    ) -> Calibrator:
        """Fit on validation probabilities; `prior_shift` is the log-odds a class weight added (temperature
        scaling removes it before fitting the temperature)."""
        from scipy.optimize import minimize, minimize_scalar
        from sklearn.isotonic import IsotonicRegression

        if method not in METHODS:
            raise ConfigError(f"calibration must be one of {METHODS}, got {method!r}")
        y = np.asarray(labels, dtype=np.float64)
        z = logit(probs)
        if method == "none" or len(z) == 0 or y.min(initial=0) == y.max(initial=0):
            return cls("none" if method == "none" else method)
        if method == "temperature":
            shifted = z - prior_shift

            def nll(log_t: float) -> float:
                return log_loss(_sigmoid(shifted / np.exp(log_t)), y)

            t = float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))
            return cls(method, 1.0 / t, -prior_shift / t)
        if method == "platt":

            def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
                q = _sigmoid(theta[0] * z + theta[1])
                grad = q - y
                return log_loss(q, y), np.array([np.mean(grad * z), np.mean(grad)])

            res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
            return cls(method, float(res.x[0]), float(res.x[1]))
        iso = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(
            np.clip(np.asarray(probs, dtype=np.float64), 0, 1), y
        )
        knots = tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_))
        return cls(method, knots_x=knots[0], knots_y=knots[1])

    @property
    def temperature(self) -> float | None:
        return 1.0 / self.slope if self.method == "temperature" else None

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        if self.method == "none":
            return p
        if self.knots_x:
            return np.interp(np.clip(p, 0, 1), self.knots_x, self.knots_y)
        return _sigmoid(self.slope * logit(p) + self.intercept)

    def state(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "slope": self.slope,
            "intercept": self.intercept,
            "temperature": self.temperature,
            "knots_x": list(self.knots_x),
            "knots_y": list(self.knots_y),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> Calibrator:
        state = dict(state or {})
        return cls(
            str(state.get("method", "none")),
            float(state.get("slope", 1.0)),
            float(state.get("intercept", 0.0)),
            tuple(map(float, state.get("knots_x", ()))),
            tuple(map(float, state.get("knots_y", ()))),
        )

    def layer(self) -> CalibrationLayer:
        return CalibrationLayer(self)


class CalibrationLayer(nn.Module):
    """The calibrator as a TorchScript-able map from logits to calibrated probabilities."""

    def __init__(self, calibrator: Calibrator):
        super().__init__()
        affine = calibrator.method in ("temperature", "platt")
        self.register_buffer(
            "affine", torch.tensor([calibrator.slope, calibrator.intercept] if affine else [1.0, 0.0])
        )
        self.register_buffer("knots_x", torch.tensor(calibrator.knots_x, dtype=torch.float64))
        self.register_buffer("knots_y", torch.tensor(calibrator.knots_y, dtype=torch.float64))

    def forward(self, logits: Tensor) -> Tensor:
        p = torch.sigmoid(self.affine[0] * logits.double() + self.affine[1])
        n = self.knots_x.shape[0]
        if n == 1:
            p = torch.full_like(p, float(self.knots_y[0]))
        elif n > 1:  # np.interp: linear between knots, constant outside
            x = p.clamp(float(self.knots_x[0]), float(self.knots_x[-1]))
            hi = torch.searchsorted(self.knots_x, x).clamp(1, n - 1)
            x0, x1 = self.knots_x[hi - 1], self.knots_x[hi]
            y0, y1 = self.knots_y[hi - 1], self.knots_y[hi]
            w = torch.where(x1 > x0, (x - x0) / (x1 - x0).clamp_min(1e-300), torch.ones_like(x))
            p = y0 + w * (y1 - y0)
        return p.float()


def calibration_report(
    raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> dict[str, float]:
    """Expected calibration error (equal-width bins, L1, like torchmetrics) and log loss, before and after."""
    y = np.asarray(labels, dtype=np.float64)
    out = {}
    for name, p in (("raw", raw), ("calibrated", calibrated)):
        out[f"ece_{name}"] = expected_calibration_error(p, y, n_bins)
        out[f"log_loss_{name}"] = log_loss(p, y)
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """The same ECE as every run's `calibration_error` metric (torchmetrics, equal-width bins, L1)."""
    from torchmetrics.functional.classification import binary_calibration_error

    p = torch.tensor(np.asarray(probs, dtype=np.float64)).clamp(0, 1)  # a copy: inputs may be read-only
    y = torch.tensor(np.asarray(labels)).long()
    if len(p) == 0:
        return 0.0
    return float(binary_calibration_error(p, y, n_bins=n_bins, norm="l1"))


def reliability_curve(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean predicted probability, observed churn rate, count (empty bins dropped)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    keep = count > 0
    mean_p = np.bincount(bins, weights=p, minlength=n_bins)[keep] / count[keep]
    rate = np.bincount(bins, weights=y, minlength=n_bins)[keep] / count[keep]
    return mean_p, rate, count[keep]
