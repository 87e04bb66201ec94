"""Additive noise at a chosen SNR, to simulate the ambient noise that makes ASR text wrong.

Kinds: ``white`` (flat spectrum), ``pink`` (1/f power, closer to room and traffic noise) and
``babble``: several *other* utterances of the same dataset mixed together (cafeteria-like
talk; utterances of the same sentence are avoided so the babble never reads the target text).
Noise is reproducible: each utterance draws from a generator seeded by (seed, utterance id), so
the result does not depend on the order or the worker that processes it.

SNR is over the whole clip: ``10 log10(sum(clean^2) / sum(noise^2))``. If the mixture would clip
(peak > 1) both parts are scaled down together, which leaves the SNR unchanged.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from koemo.data.audio import load_audio, within_full_scale
from koemo.data.manifest import Utterance
from koemo.errors import BadInputError, KoemoError
from koemo.sources import TextSource

NOISE_KINDS = ("white", "pink", "babble")
BABBLE_TALKERS = 6  # enough overlapping voices that no single word stands out
_EPS = 1e-12


@dataclass(frozen=True)
class NoiseCondition:
    """A noise kind at an SNR with a seed (its part of a text-source name: :class:`koemo.sources.TextSource`)."""

    kind: str
    snr: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise KoemoError(f"unknown noise kind '{self.kind}'; known: {', '.join(NOISE_KINDS)}")
        if not np.isfinite(self.snr):
            raise KoemoError(f"noise SNR must be a finite number of dB, got {self.snr}")



def text_source(backend: str, noise: str | None = None, snr: float | None = None, seed: int = 0) -> str:
    """The one name of a transcript column: ``asr:<backend>`` or ``asr:<backend>@<kind>-<snr>db``
    (printed by :class:`koemo.sources.TextSource`, after the noise condition is checked here).

    A non-default seed is appended (``@babble-0db-seed1``) so runs with other noise draws never
    overwrite each other. Used for manifest columns, feature keys and report rows alike.
    """
    condition = noise_condition(noise, snr, seed)
    if condition is None:
        return str(TextSource.asr(backend))
    return str(TextSource.asr(backend, condition.kind, condition.snr, condition.seed))


def noise_condition(noise: str | None, snr: float | None, seed: int = 0) -> NoiseCondition | None:
    """``None`` for clean audio; a kind without an SNR (or vice versa) is a user error."""
    if noise is None and snr is None:
        return None
    if noise is None or snr is None:
        raise KoemoError("noise needs both a kind (--noise white|pink|babble) and an SNR (--snr DB)")
    return NoiseCondition(noise, float(snr), seed)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped in the frequency domain to 1/f power (amplitude 1/sqrt(f))."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0  # keep the DC bin finite; it is removed below
    spectrum /= np.sqrt(freqs)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def babble_noise(n: int, talkers: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Sum of the talkers at equal loudness, each looped from a random offset to length ``n``."""
    mix = np.zeros(n)
    for voice in talkers:
        voice = np.asarray(voice, dtype=np.float64)
        rms = np.sqrt(np.mean(voice**2))
        if rms < _EPS:
            continue
        start = int(rng.integers(len(voice)))
        looped = np.resize(np.roll(voice, -start), n)
        mix += looped / rms
    return mix


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``clean + g * noise`` with ``g`` chosen for the SNR; scaled down together if it would clip."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)[: len(clean)]
    p_clean = np.mean(clean**2)
    p_noise = np.mean(noise**2)
    if p_clean < _EPS or p_noise < _EPS:
        return clean.astype(np.float32)  # silence stays silence: there is no level to be relative to
    gain = np.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))
    return within_full_scale(clean + gain * noise).astype(np.float32)


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """The SNR of a mixture, undoing any common scaling by projecting ``noisy`` onto ``clean``."""
    clean = np.asarray(clean, dtype=np.float64)
    noisy = np.asarray(noisy, dtype=np.float64)
    scale = np.dot(noisy, clean) / np.dot(clean, clean)
    residual = noisy - scale * clean
    return float(10 * np.log10(np.sum((scale * clean) ** 2) / np.sum(residual**2)))


def utterance_rng(seed: int, utterance_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(utterance_id.encode("utf-8"))])


@lru_cache(maxsize=64)
def _load_talker(path: str, start: float | None, end: float | None) -> np.ndarray:
    return load_audio(path, start=start, end=end, allow_silent=True)


class NoiseMaker:
    """Adds one noise condition to utterances; babble draws its talkers from ``pool``."""

    def __init__(self, condition: NoiseCondition, pool: Sequence[Utterance] = (), talkers: int = BABBLE_TALKERS):
        self.condition = condition
        self.talkers = talkers
        # Sorted by id so the talker choice depends on the pool's content, not its order.
        self.pool = sorted(pool, key=lambda u: u.id)
        if condition.kind == "babble" and len(self.pool) < 2:
            raise KoemoError("babble noise needs a dataset of at least 2 utterances to mix")

    def apply(self, utt: Utterance, audio: np.ndarray) -> np.ndarray:
        rng = utterance_rng(self.condition.seed, utt.id)
        if self.condition.kind == "white":
            noise = white_noise(len(audio), rng)
        elif self.condition.kind == "pink":
            noise = pink_noise(len(audio), rng)
        else:
            noise = babble_noise(len(audio), self._talkers_for(utt, rng), rng)
        return mix_at_snr(audio, noise, self.condition.snr)

    def _talkers_for(self, utt: Utterance, rng: np.random.Generator) -> list[np.ndarray]:
        others = [u for u in self.pool if u.id != utt.id and (not utt.group or u.group != utt.group)]
        if not others:
            others = [u for u in self.pool if u.id != utt.id]
        chosen = rng.choice(len(others), size=min(self.talkers, len(others)), replace=False)
        voices = []
        for i in sorted(chosen):
            other = others[i]
            try:
                voices.append(_load_talker(other.audio, other.start, other.end))
            except BadInputError as e:
                raise BadInputError(utt.id, f"babble talker {other.id} unreadable ({e.problem})") from None
        return voices
