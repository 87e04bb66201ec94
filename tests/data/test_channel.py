"""Simulated recording channels: each transform does what its docstring says, keeps the clip's
length and level, and a draw is reproducible from its generator."""

from __future__ import annotations

import numpy as np
import pytest

from koemo.data.channel import random_channel, response, room

SR = 16000


def _white(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _band_db(out: np.ndarray, ref: np.ndarray, lo: float, hi: float) -> float:
    """Energy of ``out`` in [lo, hi) Hz relative to ``ref``'s, in dB."""
    f = np.fft.rfftfreq(ref.size, 1 / SR)
    sel = (f >= lo) & (f < hi)
    return float(10 * np.log10(np.sum(np.abs(np.fft.rfft(out)[sel]) ** 2) / np.sum(np.abs(np.fft.rfft(ref)[sel]) ** 2)))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_a_response_cuts_its_band_edges_and_tilts_between():
    x = _white()
    band = response(x, low_hz=300.0, high_hz=3400.0, tilt_db=0.0)
    assert _band_db(band, x, 0, 200) < -60 and _band_db(band, x, 5000, 8000) < -60  # outside the band
    assert abs(_band_db(band, x, 500, 2000) - _band_db(band, x, 2000, 2400)) < 1.0  # flat inside
    tilted = response(x, low_hz=50.0, high_hz=None, tilt_db=2.0)
    # +2 dB an octave: 4 kHz lies 4 octaves above 250 Hz
    assert _band_db(tilted, x, 3800, 4200) - _band_db(tilted, x, 240, 260) == pytest.approx(8.0, abs=1.0)
    assert _rms(band) == pytest.approx(_rms(x), rel=1e-4) and band.size == x.size and band.dtype == np.float32


def test_a_room_spreads_an_impulse_over_its_reverberation_time():
    x = np.zeros(SR, np.float32)
    x[100] = 0.5
    for rt60 in (0.2, 0.7):
        out = room(x, rt60=rt60, wet=0.5, rng=np.random.default_rng(0))
        energy = np.cumsum(out[101:].astype(np.float64) ** 2)
        # the reverberant half of the energy arrives after the impulse, most of it within rt60
        assert energy[-1] > 0.3 * np.sum(out.astype(np.float64) ** 2)
        assert energy[int(rt60 * SR)] > 0.98 * energy[-1] and energy[int(rt60 * SR / 10)] < 0.9 * energy[-1]
        assert out.size == x.size and _rms(out) == pytest.approx(_rms(x), rel=1e-4)
    assert np.allclose(room(x, 0.3, 0.0, np.random.default_rng(0)), x, atol=1e-6)  # dry: as it came


def test_random_channels_are_reproducible_and_differ_by_draw():
    x = _white()
    a = random_channel(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, random_channel(x, np.random.default_rng(3)))
    b = random_channel(x, np.random.default_rng(4))
    assert not np.allclose(a, b) and not np.allclose(a, x)
    assert _rms(a) == pytest.approx(_rms(x), rel=1e-4) and a.size == x.size
    assert random_channel(np.zeros(0, np.float32), np.random.default_rng(0)).size == 0
    lows = [_band_db(random_channel(x, np.random.default_rng(s)), x, 0, 40) for s in range(20)]
    assert max(lows) < -20  # every draw cuts the lowest frequencies (its low cut is >= 50 Hz)
