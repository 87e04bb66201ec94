"""Audio in: any of wav/flac/mp3/m4a/mp4 -> 16 kHz mono float32, with checks that name the file.

soundfile (libsndfile) reads wav/flac/ogg/mp3 fast; PyAV (FFmpeg) reads everything else,
including the sound track of a video. soxr resamples.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from koemo.errors import BadInputError

SAMPLE_RATE = 16_000
# Peak amplitude below which a clip counts as silent: -80 dBFS, far under any room noise floor.
SILENCE_PEAK = 1e-4

_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}


def _read_soundfile(src, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(src) as f:
        sr = f.samplerate
        first = int(round((start or 0.0) * sr))
        last = int(round(end * sr)) if end is not None else -1
        if first:
            f.seek(min(first, f.frames))
        frames = -1 if last < 0 else max(0, last - first)
        data = f.read(frames=frames, dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def _read_pyav(src, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    import av

    with av.open(src) as container:
        streams = container.streams.audio
        if not streams:
            raise ValueError("contains no audio stream")
        stream = streams[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    first = int(round((start or 0.0) * SAMPLE_RATE))
    last = int(round(end * SAMPLE_RATE)) if end is not None else len(audio)
    return audio[first:last].astype(np.float32), SAMPLE_RATE


def _one_line(e: Exception) -> str:
    """A library's error as a short phrase, without errno codes or the path repeated."""
    text = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).split(": '")[0].strip()


def resample(audio: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if sr == target:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, sr, target, quality="HQ").astype(np.float32)


def within_full_scale(audio: np.ndarray) -> np.ndarray:
    """``audio`` scaled down by its peak where it would clip (a peak over 1.0), its shape kept;
    as it came otherwise. What a transform that adds or amplifies ends with."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return audio / peak if peak > 1.0 else audio


def load_audio(
    path: str | Path | bytes,
    *,
    start: float | None = None,
    end: float | None = None,
    allow_silent: bool = False,
    name: str | None = None,
) -> np.ndarray:
    """Read ``path`` (or raw bytes) as 16 kHz mono float32 in [-1, 1], optionally a time span.

    Raises :class:`BadInputError` naming the file for a missing, unreadable or corrupt file,
    zero-length audio and (unless ``allow_silent``) all-silent audio.
    """
    where = name or (str(path) if not isinstance(path, bytes) else "<uploaded audio>")
    if isinstance(path, bytes):
        if not path:
            raise BadInputError(where, "empty file (0 bytes)")
        sources = [("soundfile", io.BytesIO(path)), ("pyav", io.BytesIO(path))]
    else:
        p = Path(path)
        if not p.exists():
            raise BadInputError(where, "file not found")
        if p.is_dir():
            raise BadInputError(where, "is a directory, not an audio file")
        if p.stat().st_size == 0:
            raise BadInputError(where, "empty file (0 bytes)")
        order = ["soundfile", "pyav"] if p.suffix.lower() in _SOUNDFILE_SUFFIXES else ["pyav"]
        sources = [(reader, str(p)) for reader in order]

    audio = sr = None
    problems = []
    for reader, src in sources:
        try:
            if hasattr(src, "seek"):
                src.seek(0)
            fn = _read_soundfile if reader == "soundfile" else _read_pyav
            audio, sr = fn(src, start, end)
            break
        except Exception as e:  # noqa: BLE001 - libraries raise many types; we report one line
            problems.append(_one_line(e))
    if audio is None:
        raise BadInputError(where, f"not readable as audio ({problems[-1]})")

    if audio.size == 0:
        raise BadInputError(where, "zero-length audio (no samples)")
    if not np.all(np.isfinite(audio)):
        raise BadInputError(where, "audio contains NaN or infinite samples")
    n, audio = audio.size, resample(audio, sr)
    if audio.size == 0:
        raise BadInputError(where, f"too short: {n} sample{'s' if n != 1 else ''} at {sr} Hz is less than "
                                   f"one sample at {SAMPLE_RATE} Hz")
    if not allow_silent and float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise BadInputError(where, "audio is all silence (peak below -80 dBFS)")
    return audio


def audio_duration(path: str | Path) -> float:
    """Duration in seconds without decoding the whole file where the format allows."""
    p = Path(path)
    try:
        import soundfile as sf

        return float(sf.info(str(p)).duration)
    except Exception:  # noqa: BLE001 - fall back to decoding
        return len(load_audio(p, allow_silent=True)) / SAMPLE_RATE


def audio_from_array(array, sample_rate: int, *, name: str = "<array>") -> np.ndarray:
    """A caller's samples -> 16 kHz mono float32, checked like a file (:func:`load_audio`).

    Accepts 1-D samples or 2-D ``[samples, channels]`` / ``[channels, samples]`` (the shorter axis,
    at most 8, is taken as channels and averaged); integer PCM is scaled to [-1, 1].
    """
    a = np.asarray(array)
    if a.dtype.kind not in "fiu":
        raise BadInputError(name, f"samples must be numbers, not {a.dtype}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise BadInputError(name, f"sample_rate must be a positive integer (Hz), not {sample_rate!r}")
    if not (a.ndim == 1 or (a.ndim == 2 and min(a.shape) <= 8)):
        raise BadInputError(name, f"samples must be 1-D or [samples, channels], got shape {a.shape}")
    a = _int_to_float(a) if a.dtype.kind in "iu" else a.astype(np.float32)
    if a.ndim == 2:
        a = a.mean(axis=int(np.argmin(a.shape)))
    if a.size == 0:
        raise BadInputError(name, "zero-length audio (no samples)")
    if not np.all(np.isfinite(a)):
        raise BadInputError(name, "audio contains NaN or infinite samples")
    n, audio = a.size, resample(a, int(sample_rate))
    if audio.size == 0:
        raise BadInputError(name, f"too short: {n} samples at {sample_rate} Hz is less than one sample at {SAMPLE_RATE} Hz")
    if float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise BadInputError(name, "audio is all silence (peak below -80 dBFS)")
    return audio


def _int_to_float(a: np.ndarray) -> np.ndarray:
    """Integer PCM (int16, int32, uint8...) -> float32 in [-1, 1]."""
    info = np.iinfo(a.dtype)
    mid = (int(info.max) + int(info.min) + 1) / 2  # 0 for signed, 128 for uint8
    return ((a.astype(np.float64) - mid) / (info.max - mid + 1)).astype(np.float32)


def speech_bounds(audio: np.ndarray, margin_s: float, range_db: float = 40.0) -> tuple[float, float]:
    """Seconds ``(start, end)`` of a clip's speech plus ``margin_s`` either side: from the first to
    the last 10 ms frame within ``range_db`` of the loudest frame (level-relative, so a quiet
    recording is cut like a loud one; a recording without a quiet edge stays whole).

    Why: the pooled heads read the mean and spread of every frame, and silence is frames too;
    corpora differ in how much of it they leave around an utterance (docs/voice.md, "Silence at
    the edges"). The service cuts a short recording with this (``trimmed_span``), and a recipe
    with ``encoders.trim_margin`` cuts its training clips the same way (:class:`EdgeTrim`)."""
    whole = round(len(audio) / SAMPLE_RATE, 3)
    hop = SAMPLE_RATE // 100
    if len(audio) < 2 * hop:
        return 0.0, whole
    n = len(audio) // hop
    power = np.mean(np.square(audio[: n * hop].reshape(n, hop), dtype=np.float64), axis=1)
    level = 10.0 * np.log10(power + 1e-20)
    loud = np.flatnonzero(level > level.max() - range_db)
    start = max(0.0, loud[0] * hop / SAMPLE_RATE - margin_s)
    end = min(whole, (loud[-1] + 1) * hop / SAMPLE_RATE + margin_s)
    if n * hop < len(audio) and loud[-1] == n - 1:  # the samples after the last whole frame
        end = whole
    return round(start, 3), round(end, 3)


@dataclass(frozen=True)
class EdgeTrim:
    """A feature-store transform (``transform(utt, audio) -> audio`` with a ``key``): the clip cut
    to :func:`speech_bounds`, then ``then`` (an augmentation) where given. What a recipe's
    ``encoders.trim_margin`` does to its training clips, so they look like what the service
    encodes."""

    margin_s: float
    range_db: float = 40.0
    then: object = None

    @property
    def label(self) -> str:  # in progress bars
        return "cut to speech" + (f", {self.then.label}" if self.then is not None else "")

    @property
    def key(self) -> str:
        inner = f"|{self.then.key}" if self.then is not None else ""
        return f"trim|margin={self.margin_s:g}|range={self.range_db:g}|v1{inner}"

    def __call__(self, utt, audio: np.ndarray) -> np.ndarray:
        start, end = speech_bounds(audio, self.margin_s, self.range_db)
        out = audio[int(round(start * SAMPLE_RATE)): int(round(end * SAMPLE_RATE))]
        return self.then(utt, out) if self.then is not None else out
