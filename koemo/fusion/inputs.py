"""What a downstream head reads of the speech encoder's frames: speaker-normalised, as frames or as
clip statistics (s3prl's "featurizer" step, between the upstream encoder and the head).

**Speaker normalisation.** Whisper frames carry the voice and the channel as much as the
emotion; a model trained on ten voices meets the eleventh shifted. Standardising each
(layer, dimension) by the statistics of the speaker's own frames removes that shift: measured
on EmotionTTS, a linear probe trained on the emotional-script speakers and tested on the
plain-script speakers went from weighted F1 0.43 to 0.68 (layer 2). Statistics come from a
*group* of clips (one speaker in training; one session or one recording in service):

- ``mean[l, d]`` and ``sd[l, d]`` over every frame of the group's clips;
- a group with fewer than ``min_clips`` clips uses the *corpus* statistics (all training clips,
  stored in the bundle), so a single clip is never normalised by itself: its own mean is where
  the emotion is.

The caveat: a group whose clips are all one emotion is normalised towards neutral; a group
should hold varied speech (a call, a session, a speaker's recordings).

**Views.** ``frames``: the normalised frames ``[T, (L,) D]`` (sequence heads). ``stats``: the
clip's mean and standard deviation over time, concatenated, ``[1, (L,) 2D]`` (pooled heads:
statistics pooling); computed once per clip here, where the model would otherwise pad and pool
every frame at every step. Both are exact functions of the frames, so training and service
compute them with this one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from koemo.errors import KoemoError

NORMALISE = ("speaker", "none")
VIEWS = ("frames", "stats")
EPS = 1e-5


@dataclass
class Moments:
    """Frame count and per-(layer, dim) sums of a set of frames: what statistics combine from."""

    n: float
    total: np.ndarray  # sum of frames, [(L,) D]
    total_sq: np.ndarray  # sum of squared frames
    clips: int = 1

    @classmethod
    def of(cls, frames: np.ndarray) -> "Moments":
        x = np.asarray(frames, dtype=np.float64)
        return cls(float(x.shape[0]), x.sum(axis=0), np.square(x).sum(axis=0), 1)

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq,
                       self.clips + other.clips)

    @staticmethod
    def sum(items: Iterable["Moments"]) -> "Moments":
        items = list(items)
        if not items:
            raise KoemoError("no frames to compute statistics from")
        out = items[0]
        for m in items[1:]:
            out = out + m
        return out

    def mean_sd(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / max(self.n, 1.0)
        var = self.total_sq / max(self.n, 1.0) - np.square(mean)
        return mean.astype(np.float32), np.sqrt(np.maximum(var, 0.0) + EPS).astype(np.float32)


@dataclass
class Normaliser:
    """Per-group standardisation with the corpus statistics as the fallback (see the module doc)."""

    mode: str  # speaker | none
    corpus_mean: np.ndarray
    corpus_sd: np.ndarray
    min_clips: int = 3

    def __post_init__(self) -> None:
        if self.mode not in NORMALISE:
            raise KoemoError(f"normalisation {self.mode!r}: use one of {', '.join(NORMALISE)}")

    @classmethod
    def fit(cls, mode: str, corpus: Moments, min_clips: int = 3) -> "Normaliser":
        mean, sd = corpus.mean_sd()
        return cls(mode, mean, sd, int(min_clips))

    def stats_for(self, group: Moments | None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) for a group of clips: its own when normalising by speaker and it has at least
        ``min_clips`` clips, else the corpus statistics."""
        if not self.uses_corpus(group):
            return group.mean_sd()
        return self.corpus_mean, self.corpus_sd

    def uses_corpus(self, group: Moments | None) -> bool:
        """Whether ``group`` is standardised by the corpus statistics (too few clips of its own)."""
        return not (self.mode == "speaker" and group is not None and group.clips >= self.min_clips)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"corpus_mean": self.corpus_mean, "corpus_sd": self.corpus_sd}

    def to_meta(self) -> dict:
        return {"mode": self.mode, "min_clips": self.min_clips}

    @classmethod
    def from_parts(cls, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> "Normaliser":
        return cls(meta["mode"], np.asarray(arrays["corpus_mean"], np.float32),
                   np.asarray(arrays["corpus_sd"], np.float32), int(meta.get("min_clips", 3)))


def normalise(frames: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return ((np.asarray(frames, dtype=np.float32) - mean) / sd).astype(np.float32)


def clip_stats(frames: np.ndarray) -> np.ndarray:
    """``[T, (L,) D]`` frames -> ``[1, (L,) 2D]``: the mean and standard deviation over time."""
    x = np.asarray(frames, dtype=np.float32)
    return np.concatenate([x.mean(axis=0), x.std(axis=0)], axis=-1)[None].astype(np.float32)


def pool_time(x: np.ndarray, k: int) -> np.ndarray:
    """Average non-overlapping windows of ``k`` frames (the last window over the frames it has)."""
    if k <= 1:
        return x
    n = x.shape[0]
    starts = np.arange(0, n, k)
    return (np.add.reduceat(x, starts, axis=0) / np.diff(np.append(starts, n)).reshape(-1, *[1] * (x.ndim - 1))
            ).astype(np.float32)


def standardised_stats(stats: np.ndarray, mean: np.ndarray | None, sd: np.ndarray | None) -> np.ndarray:
    """:func:`clip_stats` of the frames standardised by ``mean``/``sd``, from those of the raw
    frames: the mean becomes ``(mean - m) / s``, the standard deviation ``sd / s``. So a clip's
    statistics, once computed, serve any group's normalisation (a batch keeps them, not the frames,
    until every file's statistics are summed: :class:`koemo.serving.predictor.Encoded`)."""
    if mean is None:
        return stats
    d = stats.shape[-1] // 2
    return np.concatenate([(stats[..., :d] - mean) / sd, stats[..., d:] / sd], axis=-1).astype(np.float32)


def view(frames: np.ndarray, kind: str, mean: np.ndarray | None = None, sd: np.ndarray | None = None,
         pool: int = 1, layers: Sequence[int] | None = None) -> np.ndarray:
    """The head's input from one clip's frames: normalised (when ``mean``/``sd`` are given), then
    as ``frames`` (averaged ``pool`` at a time) or ``stats``; of stacked frames ``[T, L, D]`` only
    the ``layers`` given (None: all)."""
    if kind not in VIEWS:
        raise KoemoError(f"speech view {kind!r}: use one of {', '.join(VIEWS)}")
    if kind == "stats":
        return stats_view(clip_stats(frames), mean, sd, layers)
    x = normalise(frames, mean, sd) if mean is not None else np.asarray(frames, dtype=np.float32)
    return select_layers(pool_time(x, pool), layers)


def stats_view(stats: np.ndarray, mean: np.ndarray | None = None, sd: np.ndarray | None = None,
               layers: Sequence[int] | None = None) -> np.ndarray:
    """The ``stats`` view from a clip's raw :func:`clip_stats`: standardised by ``mean``/``sd``
    (when given), then its ``layers``. :func:`view` and the service's kept statistics
    (:class:`koemo.serving.predictor.ClipStats`) both end here."""
    return select_layers(standardised_stats(stats, mean, sd), layers)


def select_layers(x: np.ndarray, layers: Sequence[int] | None) -> np.ndarray:
    """The ``layers`` of a view with a layer axis (``[T, L, D]``, the stats view ``[1, L, 2D]``),
    in the order given; all of them for None. Whisper's front end and first block sit nearest the
    waveform and move most under a new recording channel (``encoders.speech_layers``,
    docs/voice.md)."""
    if layers is None:
        return x
    if x.ndim != 3:
        raise KoemoError(f"speech layers {list(layers)} need every layer of the encoder (encoders.speech_layer: all)")
    bad = [k for k in layers if not 0 <= int(k) < x.shape[1]]
    if bad or not len(layers):
        raise KoemoError(f"speech layers {list(layers)}: the encoder gives layers 0-{x.shape[1] - 1}")
    return np.ascontiguousarray(x[:, [int(k) for k in layers]])


def group_views(tables: Sequence[Mapping[str, np.ndarray]], groups: Mapping[str, str], kind: str,
                normaliser: Normaliser | None, pool: int = 1,
                layers: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
    """Views of every clip of several tables of the same clips (the clean frames first, then
    augmented copies), each clip normalised by its group's statistics (``groups``: clip id ->
    speaker or session). Group statistics come from the first (clean) table only."""
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if normaliser is not None:
        members: dict[str, list[str]] = {}
        for uid in tables[0]:
            members.setdefault(groups.get(uid, uid), []).append(uid)
        for group, ids in members.items():
            moments = Moments.sum(Moments.of(tables[0][u]) for u in ids)
            mean_sd = normaliser.stats_for(moments)
            for u in ids:
                stats[u] = mean_sd
    out = []
    for table in tables:
        out.append({u: view(a, kind, *stats.get(u, (None, None)), pool=pool, layers=layers) for u, a in table.items()})
    return out
