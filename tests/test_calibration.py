"""ECE and temperature scaling, checked on probabilities whose miscalibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from koemo.calibration import apply_temperature, cross_fitted, ece, fit_temperature, nll, reliability
from koemo.errors import KoemoError


def sharpened(n: int = 3000, temperature: float = 0.4, seed: int = 0):
    """Labels drawn from calibrated probabilities p; the model reports p sharpened by 1/T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4)) * 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    return apply_temperature(p, temperature), y, p


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin of 0.9: confidence 0.9, accuracy 0.5; bin of 0.6: confidence 0.6, accuracy 1.0
    assert ece(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    r = reliability(probs, y)
    assert r.count.sum() == 4 and np.count_nonzero(r.count) == 2


def test_temperature_scaling_recovers_the_sharpening_and_keeps_every_label():
    over, y, calibrated = sharpened()
    t = fit_temperature(over, y)
    assert t == pytest.approx(1 / 0.4, rel=0.15)
    fixed = apply_temperature(over, t)
    assert (fixed.argmax(1) == over.argmax(1)).all()
    assert ece(fixed, y) < ece(over, y) / 3 and nll(fixed, y) < nll(over, y)
    assert ece(fixed, y) == pytest.approx(ece(calibrated, y), abs=0.02)
    with pytest.raises(KoemoError, match="temperature must be > 0"):
        apply_temperature(over, 0.0)


def test_cross_fitting_never_calibrates_a_fold_on_itself():
    over, y, _ = sharpened(n=1200)
    folds = np.repeat(["a", "b", "c"], 400)
    scaled, temps = cross_fitted(over, y, folds)
    assert len(temps) == 3
    for i, g in enumerate(["a", "b", "c"]):
        inside = folds == g
        assert temps[i] == pytest.approx(fit_temperature(over[~inside], y[~inside]))
        np.testing.assert_allclose(scaled[inside], apply_temperature(over[inside], temps[i]))
    assert ece(scaled, y) < ece(over, y) / 2
