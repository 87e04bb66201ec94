"""Recording channels, simulated: a random microphone or line response and a random room.

Corpora differ in microphones, lines and rooms as much as in speakers. A session's clips are
standardised together, which removes most of a channel's fixed colouring (docs/voice.md); a lone
clip is standardised by the studio corpus's statistics and meets the channel raw. Training
copies passed through :func:`random_channel` (``augment.channel``) let a model hear the voices
of its corpus through channels the corpus lacks. Measured on the second head's copy, not
shipped: better under a room or phone line, worse on clean, babble and quieter speech
(docs/voice.md).

Each draw comes from the caller's generator, so a copy is the same on every run. The
transforms keep the clip's length and its RMS level (the level is ``augment.volume_db``'s).
"""

from __future__ import annotations

import numpy as np

from koemo.data.audio import SAMPLE_RATE, within_full_scale

#: share of channels that include a room (the rest: a close microphone, its response only)
ROOM_SHARE = 0.5


def random_channel(audio: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``audio`` through a random room (half the time) and a random frequency response (always):
    a low cut at 50-400 Hz, half the time a high cut at 3-7.5 kHz (both log-uniform), a tilt of
    -2..+2 dB per octave; a room of RT60 0.15-0.8 s (log-uniform) with 10-50% reverberant energy."""
    out = np.asarray(audio, dtype=np.float32)
    if not out.size:
        return out
    if rng.random() < ROOM_SHARE:
        rt60 = float(np.exp(rng.uniform(np.log(0.15), np.log(0.8))))
        out = room(out, rt60, float(rng.uniform(0.1, 0.5)), rng, sample_rate)
    low = float(np.exp(rng.uniform(np.log(50.0), np.log(400.0))))
    high = float(np.exp(rng.uniform(np.log(3000.0), np.log(7500.0)))) if rng.random() < 0.5 else None
    return response(out, low, high, float(rng.uniform(-2.0, 2.0)), sample_rate)


def response(audio: np.ndarray, low_hz: float, high_hz: float | None, tilt_db: float,
             sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A microphone or line: the band from ``low_hz`` (to ``high_hz``; ``None``: no high cut),
    each edge a half-octave raised-cosine slope, and a tilt of ``tilt_db`` per octave around
    1 kHz. Same RMS as ``audio``."""
    freqs = np.maximum(np.fft.rfftfreq(audio.size, 1.0 / sample_rate), 1.0)
    gain = 10 ** (tilt_db * np.log2(freqs / 1000.0) / 20)
    gain *= _slope(np.log2(freqs / low_hz))  # rises over the half octave above the cut
    if high_hz is not None:
        gain *= _slope(np.log2(high_hz / freqs))
    out = np.fft.irfft(np.fft.rfft(audio) * gain, n=audio.size)
    return _same_level(out, audio)


def room(audio: np.ndarray, rt60: float, wet: float, rng: np.random.Generator,
         sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A room: the direct sound, 4-12 early reflections in the first 5-40 ms and a diffuse tail
    decaying 60 dB in ``rt60`` s, mixed at ``wet`` of the energy reverberant. Same RMS as
    ``audio``, same length (the tail past the end is cut)."""
    n = max(int(rt60 * sample_rate), 1)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.005 * sample_rate)] = 0.0  # the diffuse part starts after the first reflections
    for _ in range(int(rng.integers(4, 13))):
        at = int(rng.uniform(0.005, 0.04) * sample_rate)
        if at < n:
            tail[at] += rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0) * 3.0
    tail /= max(float(np.sqrt(np.sum(tail ** 2))), 1e-12)
    size = audio.size + n - 1
    reverberant = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(tail, size), size)[: audio.size]
    scale = _rms(audio) / max(_rms(reverberant), 1e-12)
    out = np.sqrt(1 - wet) * audio + np.sqrt(wet) * reverberant * scale
    return _same_level(out, audio)


def _slope(octaves_past: np.ndarray) -> np.ndarray:
    """0 below the cut, 1 half an octave past it, a raised cosine between."""
    x = np.clip(octaves_past / 0.5, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _same_level(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    level = _rms(out)
    out = out * (_rms(like) / level) if level > 0 else out
    return within_full_scale(out).astype(np.float32)


__all__ = ["ROOM_SHARE", "random_channel", "response", "room"]
