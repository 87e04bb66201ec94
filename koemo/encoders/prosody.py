"""Prosody: one vector of clip-level functionals of pitch, loudness, voice quality, spectral
balance and rhythm (the kinds of parameter eGeMAPS chose for emotion across corpora).

Why: Whisper's frames are trained to carry words; the voice's melody, effort and tempo are the
cues of emotion that carry across languages and recording set-ups, and a few dozen of them
summarised per clip add what the frames' means and deviations miss (docs/voice.md, "Prosody").
Written here with numpy (and librosa's mel filters) because openSMILE, which computes eGeMAPS,
ships a binary under a research-only licence.

Analysis: 40 ms frames every 10 ms at 16 kHz. Pitch from the normalised autocorrelation (55-500
Hz, parabolic peak); a frame is voiced when the peak passes 0.5 and its level is within 35 dB
of the clip's loudest frame. Functionals (``FEATURES``, 41 values):

- F0 in semitones from 27.5 Hz over voiced frames: mean, coefficient of variation, 20th / 50th /
  80th percentile, 20-80 range, mean rising and falling slope (semitones per second);
- frame level (dB) over all frames: the same eight;
- voice quality over voiced frames: harmonics-to-noise ratio mean and deviation, jitter (period
  change between neighbouring voiced frames over the mean period), shimmer (level change, dB);
- spectral balance: alpha ratio and Hammarberg index (voiced, unvoiced), spectral slope 0-500
  and 500-1,500 Hz (voiced), spectral flux mean and deviation, MFCC 1-4 mean and deviation;
- rhythm: voiced segments per second, their mean and deviation length, mean pause between them,
  share of voiced frames.

A clip with no voiced frame gets zeros for the pitch and voice-quality functionals. As a speech
encoder (``encoders.speech: prosody``) it gives ``[1, 41]``: a linear head on it is the classic
paralinguistic baseline; ``encoders.prosody: true`` appends it to another encoder's layers
(:func:`with_prosody`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from koemo.encoders.base import SPEECH_ENCODERS, SpeechEncoder
from koemo.errors import KoemoError

SR = 16000
FRAME, HOP, NFFT = 640, 160, 2048
F0_MIN, F0_MAX = 55.0, 500.0
VOICING = 0.5  # normalised autocorrelation peak of a voiced frame
RANGE_DB = 35.0  # voiced frames are within this of the loudest frame
PEAK_SEARCH = 20  # lags searched past the first near-highest value for its peak

_STATS8 = ("mean", "cv", "p20", "p50", "p80", "range20_80", "rise", "fall")
FEATURES = (
    [f"f0_{s}" for s in _STATS8] + [f"level_{s}" for s in _STATS8]
    + ["hnr_mean", "hnr_sd", "jitter", "shimmer_db"]
    + ["alpha_voiced", "alpha_unvoiced", "hammarberg_voiced", "hammarberg_unvoiced",
       "slope_0_500", "slope_500_1500", "flux_mean", "flux_sd"]
    + [f"mfcc{k}_{s}" for k in range(1, 5) for s in ("mean", "sd")]
    + ["voiced_per_s", "voiced_len_mean", "voiced_len_sd", "pause_len_mean", "voiced_share"]
)


def _frames(x: np.ndarray) -> np.ndarray:
    n = 1 + max(0, len(x) - FRAME + HOP - 1) // HOP
    x = np.pad(x, (0, (n - 1) * HOP + FRAME - len(x)))
    return np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:n]


def _eight(v: np.ndarray, hop_s: float, segments: list[np.ndarray] | None = None) -> list[float]:
    """mean, coefficient of variation, percentiles, range and the mean rising / falling slope
    (per second, within ``segments`` of consecutive frames, else over the whole track)."""
    if v.size == 0:
        return [0.0] * 8
    p20, p50, p80 = np.percentile(v, [20, 50, 80])
    mean = float(v.mean())
    cv = float(v.std() / abs(mean)) if abs(mean) > 1e-6 else 0.0
    diffs = np.concatenate([np.diff(s) for s in (segments or [v]) if s.size > 1] or [np.zeros(0)]) / hop_s
    rise = float(diffs[diffs > 0].mean()) if (diffs > 0).any() else 0.0
    fall = float(-diffs[diffs < 0].mean()) if (diffs < 0).any() else 0.0
    return [mean, cv, float(p20), float(p50), float(p80), float(p80 - p20), rise, fall]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of the runs of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _db(x: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(x, 1e-12))


def functionals(audio: np.ndarray) -> np.ndarray:
    """The clip's ``FEATURES`` (float32) from 16 kHz mono audio."""
    import librosa

    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    frames = _frames(x)
    frames = frames - frames.mean(axis=1, keepdims=True)
    power = np.mean(frames ** 2, axis=1)
    level = _db(power)
    # pitch: normalised autocorrelation, corrected for the shrinking overlap at longer lags
    spec = np.fft.rfft(frames, NFFT)
    ac = np.fft.irfft(np.abs(spec) ** 2, NFFT)[:, :FRAME]
    lo, hi = int(SR / F0_MAX), int(SR / F0_MIN)
    norm = ac[:, lo:hi + 1] / np.maximum(ac[:, :1], 1e-12) * (FRAME / (FRAME - np.arange(lo, hi + 1)))
    # the shortest lag whose peak comes within 10% of the highest: a period, not a multiple of it
    first = np.argmax(norm >= 0.9 * norm.max(axis=1, keepdims=True), axis=1)
    window = np.minimum(first[:, None] + np.arange(PEAK_SEARCH), norm.shape[1] - 1)
    k = np.take_along_axis(window, np.argmax(np.take_along_axis(norm, window, axis=1), axis=1)[:, None], 1)[:, 0]
    peak = norm[np.arange(len(k)), k]
    inner = (k > 0) & (k < norm.shape[1] - 1)
    rows = np.arange(len(k))[inner]
    a, b, c = norm[rows, k[inner] - 1], norm[rows, k[inner]], norm[rows, k[inner] + 1]
    shift = np.zeros(len(k))
    shift[inner] = np.clip(0.5 * (a - c) / np.where(np.abs(a - 2 * b + c) > 1e-12, a - 2 * b + c, 1e-12), -0.5, 0.5)
    lag = lo + k + shift
    voiced = (peak > VOICING) & (level > level.max() - RANGE_DB) & (power > 1e-10)
    hop_s = HOP / SR
    runs = _runs(voiced)
    semitone = 12.0 * np.log2(SR / lag / 27.5)
    f0 = _eight(semitone[voiced], hop_s, [semitone[s:e] for s, e in runs])
    lev = _eight(level, hop_s)
    pv = np.clip(peak[voiced], 1e-3, 1 - 1e-3)
    hnr = _db(pv / (1 - pv))
    periods, amps = lag / SR, level
    jit = [np.abs(np.diff(periods[s:e])) for s, e in runs if e - s > 1]
    shim = [np.abs(np.diff(amps[s:e])) for s, e in runs if e - s > 1]
    quality = [float(hnr.mean()) if hnr.size else 0.0, float(hnr.std()) if hnr.size else 0.0,
               float(np.concatenate(jit).mean() / periods[voiced].mean()) if jit else 0.0,
               float(np.concatenate(shim).mean()) if shim else 0.0]
    # spectral balance: Hann-windowed power spectra of the same frames
    p = np.abs(np.fft.rfft(frames * np.hanning(FRAME), NFFT)) ** 2
    freqs = np.fft.rfftfreq(NFFT, 1.0 / SR)

    def band(f0_: float, f1_: float) -> np.ndarray:
        return (freqs >= f0_) & (freqs < f1_)

    alpha = _db(p[:, band(50, 1000)].sum(1)) - _db(p[:, band(1000, 5000)].sum(1))
    hammarberg = _db(p[:, band(0, 2000)].max(1)) - _db(p[:, band(2000, 5000)].max(1))
    loud = level > level.max() - RANGE_DB
    unvoiced = loud & ~voiced

    def mean_of(v: np.ndarray, m: np.ndarray) -> float:
        return float(v[m].mean()) if m.any() else 0.0

    def slope(f0_: float, f1_: float) -> np.ndarray:
        m = band(f0_, f1_)
        f = freqs[m] - freqs[m].mean()
        return (_db(p[:, m]) * f).sum(1) / (f ** 2).sum() * 1000.0  # dB per kHz

    unit = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    flux = np.sum(np.diff(unit, axis=0) ** 2, axis=1) if len(unit) > 1 else np.zeros(1)
    mel = librosa.filters.mel(sr=SR, n_fft=NFFT, n_mels=26, fmin=20, fmax=8000)
    logmel = np.log(np.maximum(p @ mel.T, 1e-10))
    n = logmel.shape[1]
    dct = np.cos(np.pi / n * (np.arange(n) + 0.5)[None, :] * np.arange(1, 5)[:, None])
    mfcc = (logmel @ dct.T)[loud] if loud.any() else np.zeros((1, 4))
    spectral = [mean_of(alpha, voiced), mean_of(alpha, unvoiced), mean_of(hammarberg, voiced),
                mean_of(hammarberg, unvoiced), mean_of(slope(0, 500), voiced), mean_of(slope(500, 1500), voiced),
                float(flux.mean()), float(flux.std())]
    spectral += [float(v) for k in range(4) for v in (mfcc[:, k].mean(), mfcc[:, k].std())]
    duration = max(len(x) / SR, hop_s)
    lengths = np.array([(e - s) * hop_s for s, e in runs])
    pauses = np.array([(runs[i + 1][0] - runs[i][1]) * hop_s for i in range(len(runs) - 1)])
    rhythm = [len(runs) / duration, float(lengths.mean()) if lengths.size else 0.0,
              float(lengths.std()) if lengths.size else 0.0, float(pauses.mean()) if pauses.size else 0.0,
              float(voiced.mean())]
    out = np.array(f0 + lev + quality + spectral + rhythm, dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


@SPEECH_ENCODERS.register("prosody")
class Prosody(SpeechEncoder):
    """The functionals as one ``[1, 41]`` frame per clip (no time axis to pool)."""

    name = "prosody"
    dim = len(FEATURES)
    finetunable = False
    min_samples = FRAME

    def __init__(self, layer: int | None = None):
        pass

    @property
    def id(self) -> str:
        return f"prosody|v1|frame={FRAME}|hop={HOP}|f0={F0_MIN:g}-{F0_MAX:g}|voicing={VOICING}|range={RANGE_DB:g}"

    def _encode(self, audio: np.ndarray) -> np.ndarray:
        return functionals(audio)[None]


def with_prosody(frames: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``frames`` with the clip's functionals at every time step: ``[T, L, D]`` frames get them as
    one more layer (zero-padded to ``D``); ``[T, D]`` frames get them after ``D``. Constant over
    time, so a group's frame statistics standardise them across its clips and a clip's mean over
    time is its own functionals (:mod:`koemo.fusion.inputs`): nothing downstream changes."""
    f = np.asarray(frames)
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if f.ndim == 3:
        if f.shape[2] < v.size:
            raise KoemoError(f"encoders.prosody: {v.size} functionals do not fit a layer of {f.shape[2]} dims")
        extra = np.zeros((f.shape[0], 1, f.shape[2]), dtype=f.dtype)
        extra[:, 0, : v.size] = v
        return np.concatenate([f, extra], axis=1)
    if f.ndim != 2:
        raise KoemoError(f"encoders.prosody: frames of shape {f.shape}; expected [T, D] or [T, L, D]")
    return np.concatenate([f, np.broadcast_to(v.astype(f.dtype), (f.shape[0], v.size))], axis=1)


def add_prosody(store, frames: Mapping[str, np.ndarray], utts: Sequence, *, transform=None,
                progress: bool = True, extract_missing: bool = True) -> dict[str, np.ndarray]:
    """``frames`` (``{utt id: frames}``) with each clip's functionals (:func:`with_prosody`),
    read from the feature store (extracted into it on first use, of the same ``transform``)."""
    vectors = store.speech(Prosody.name, [u for u in utts if u.id in frames], extract_missing,
                           progress=progress, transform=transform)
    missing = [u for u in frames if u not in vectors]
    if missing:
        raise KoemoError(f"encoders.prosody: no functionals for {len(missing)} clips (first: {missing[0]})")
    return {u: with_prosody(a, vectors[u][0]) for u, a in frames.items()}


def prosody_stage(encode, joint=None):
    """Service side of ``encoders.prosody``: ``encode`` (audio -> frames) and the shared pass's
    ``joint`` (audio -> transcript, frames, timings) with the clip's functionals appended, their
    time counted as the speech encoder's."""
    import time

    def encode_with(audio: np.ndarray) -> np.ndarray:
        return with_prosody(encode(audio), functionals(audio))

    def joint_with(audio: np.ndarray):
        transcript, frames, split = joint(audio)
        t0 = time.perf_counter()
        frames = with_prosody(frames, functionals(audio))
        return transcript, frames, {**split, "speech_encoder": split.get("speech_encoder", 0.0) + time.perf_counter() - t0}

    return encode_with, (joint_with if joint is not None else None)
