"""Calibrators recover known distortions, and the scripted layer applies exactly the fitted map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from churnwatch.models.calibration import Calibrator, calibration_report, expected_calibration_error, logit


def _truth(n: int = 20000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    return p, (rng.random(n) < p).astype(float)


def test_platt_calibration_undoes_a_known_distortion():
    p, y = _truth()
    overconfident = 1 / (1 + np.exp(-(2.0 * logit(p) + 0.5)))
    cal = Calibrator.fit("platt", overconfident, y)
    assert cal.slope == pytest.approx(0.5, abs=0.05)
    assert cal.intercept == pytest.approx(-0.25, abs=0.08)
    assert np.abs(cal(overconfident) - p).mean() < 0.02


def test_temperature_scaling_removes_the_class_weight_shift_and_finds_the_temperature():
    """A class weight w adds log(w) to the logit; a sharpened model divides by T < 1."""
    p, y = _truth()
    w, t = 3.0, 0.6
    distorted = 1 / (1 + np.exp(-(logit(p) / t + np.log(w))))
    cal = Calibrator.fit("temperature", distorted, y, prior_shift=np.log(w))
    assert cal.temperature == pytest.approx(1 / t, rel=0.05)
    assert np.abs(cal(distorted) - p).mean() < 0.02
    report = calibration_report(distorted, cal(distorted), y)
    assert report["ece_calibrated"] < 0.02 < report["ece_raw"]
    assert report["log_loss_calibrated"] < report["log_loss_raw"]


def test_isotonic_is_monotone_and_calibrates_a_nonlinear_distortion():
    p, y = _truth()
    distorted = p**3  # not a logistic distortion: Platt cannot undo it, isotonic can
    cal = Calibrator.fit("isotonic", distorted, y)
    out = cal(np.sort(distorted))
    assert (np.diff(out) >= -1e-12).all()
    assert expected_calibration_error(cal(distorted), y) < 0.02 < expected_calibration_error(distorted, y)


@pytest.mark.parametrize("method", ["none", "temperature", "platt", "isotonic"])
def test_scripted_layer_matches_the_numpy_map_after_a_json_round_trip(method):
    p, y = _truth(5000, seed=2)
    skewed = p**1.7
    cal = Calibrator.fit(method, skewed, y, prior_shift=0.3)
    again = Calibrator.from_state(json.loads(json.dumps(cal.state())))
    assert again == cal
    layer = torch.jit.script(again.layer())
    probe = np.r_[skewed[:500], 1e-7, 0.5, 1 - 1e-7]
    out = layer(torch.tensor(logit(probe))).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, cal(probe), atol=2e-6)


def test_single_class_validation_leaves_probabilities_alone():
    p = np.linspace(0.1, 0.9, 50)
    cal = Calibrator.fit("platt", p, np.zeros(50))
    np.testing.assert_allclose(cal(p), p)
