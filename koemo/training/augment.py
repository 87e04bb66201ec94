"""Training-data augmentation for small data: audio transforms re-encoded into extra copies of
each clip's speech features, and frame masking of each copy's statistics.

Recipe section ``augment`` (:class:`koemo.config.AugmentConfig`): ``copies`` augmented copies
of every clip, each drawn from ``(seed, clip id, copy)`` so a re-run gives the same copies:

- ``noise`` (white | pink | babble) at an SNR drawn uniformly from ``snr`` dB
  (:mod:`koemo.asr.noise`, the same mixer the ASR noise conditions use);
- ``speed``: a tempo-and-pitch factor drawn from the range (resampling, as Kaldi's speed
  perturbation);
- ``channel``: the share of copies passed through a random recording channel after the noise
  (a microphone or line response, and a room half the time: :mod:`koemo.data.channel`), so
  that the mic and room colour the speech and the noise alike;
- ``volume_db``: a gain drawn from the range;
- ``frame_mask``: the share of a copy's frames left out (at random) of the statistics a pooled
  head reads, or zeroed for a sequence head.

Copies live in the feature store beside the clean features, keyed by the transform, so they are
computed once. In training, each example of each step reads the clean features or one copy at
random; validation and test read the clean features.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from koemo.config import AugmentConfig
from koemo.data.audio import SAMPLE_RATE, resample, within_full_scale
from koemo.data.manifest import Utterance
from koemo.errors import KoemoError


def _rng(seed: int, uid: str, copy: int, what: str) -> np.random.Generator:
    return np.random.default_rng([seed, copy, zlib.crc32(f"{uid}|{what}".encode())])


@dataclass(frozen=True)
class AudioTransform:
    """Copy ``copy`` of the recipe's audio augmentation; ``key`` names it in the feature store."""

    cfg: AugmentConfig
    copy: int
    pool: tuple[Utterance, ...] = ()

    label = "augmented"  # in progress bars

    @property
    def key(self) -> str:
        c = self.cfg
        return (f"aug|copy={self.copy}|seed={c.seed}|noise={c.noise}:{list(c.snr)}|speed={c.speed}"
                f"|volume={c.volume_db}" + (f"|channel={c.channel}" if c.channel else ""))

    def __call__(self, utt: Utterance, audio: np.ndarray) -> np.ndarray:
        c = self.cfg
        out = np.asarray(audio, dtype=np.float32)
        if c.speed:
            factor = float(_rng(c.seed, utt.id, self.copy, "speed").uniform(*c.speed))
            # played `factor` times faster: fewer samples at the same rate (tempo and pitch change)
            out = resample(out, int(round(SAMPLE_RATE * factor)), SAMPLE_RATE)
        if c.noise:
            from koemo.asr.noise import NoiseCondition, NoiseMaker

            snr = float(_rng(c.seed, utt.id, self.copy, "snr").uniform(*c.snr))
            seed = zlib.crc32(f"{c.seed}|{self.copy}".encode()) % (2**31)
            out = NoiseMaker(NoiseCondition(c.noise, snr, seed), self.pool).apply(utt, out)
        if c.channel:
            rng = _rng(c.seed, utt.id, self.copy, "channel")
            if rng.random() < c.channel:
                from koemo.data.channel import random_channel

                out = random_channel(out, rng)
        if c.volume_db:
            gain = float(_rng(c.seed, utt.id, self.copy, "volume").uniform(*c.volume_db))
            out = within_full_scale(out * np.float32(10 ** (gain / 20)))  # louder than full scale would clip
        return out.astype(np.float32)


def check(cfg: AugmentConfig) -> None:
    if cfg.copies < 0 or not 0.0 <= cfg.frame_mask < 1.0:
        raise KoemoError("augment.copies must be >= 0 and augment.frame_mask in [0, 1)")
    if not 0.0 <= cfg.channel <= 1.0:
        raise KoemoError(f"augment.channel is the share of copies given a random channel, in [0, 1]; got {cfg.channel}")
    for name in ("snr", "speed", "volume_db"):
        rng = getattr(cfg, name)
        if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
            raise KoemoError(f"augment.{name} must be [low, high], got {rng}")
    if cfg.speed is not None and cfg.speed[0] <= 0:
        raise KoemoError(f"augment.speed must be positive, got {cfg.speed}")
    if cfg.copies and not (cfg.noise or cfg.speed or cfg.volume_db or cfg.channel or cfg.frame_mask):
        raise KoemoError("augment.copies > 0 needs a transform: noise, speed, volume_db, channel or frame_mask")
    if cfg.corpus_normalised not in (0, 1):
        raise KoemoError(f"augment.corpus_normalised must be 0 or 1, got {cfg.corpus_normalised}")
    if cfg.mixed_groups < 0:
        raise KoemoError(f"augment.mixed_groups must be 0 (off) or a number of speakers, got {cfg.mixed_groups}")


def mask_frames(frames: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``frames`` without a random ``share`` of its time steps (at least one kept)."""
    if share <= 0:
        return frames
    n = frames.shape[0]
    keep = rng.random(n) >= share
    if not keep.any():
        keep[rng.integers(n)] = True
    return frames[keep]


def masked_copies(copies: Sequence[Mapping[str, np.ndarray]], share: float, seed: int) -> list[dict]:
    """Each copy with ``share`` of every clip's frames left out (seeded by seed, clip and copy)."""
    if share <= 0:
        return list(copies)
    return [{u: mask_frames(np.asarray(a), share, _rng(seed, u, k, "mask")) for u, a in copy.items()}
            for k, copy in enumerate(copies)]
