"""How the shipped model holds up when the recording conditions change (speech recorded elsewhere).

    python benchmarks/channel_shift.py                 # the table in docs/voice.md
    python benchmarks/channel_shift.py --seeds 5 --json out.json

koemo will meet Korean speech from other microphones, rooms and phone lines. This re-scores the
recipe's text-neutral fold bundles (``koemo reproduce`` trained them, one per seed; speakers and
sentences never heard, words that carry no emotion) on their 100 test clips passed through a
channel before encoding:

- ``clean``: as recorded (the protocol's number);
- ``telephone``: narrowband phone line: 8 kHz sampling, 300-3,400 Hz, 8-bit mu-law;
- ``reverb``: a room (synthetic impulse response, exponential decay, RT60 0.5 s, 30% wet);
- ``babble 10 dB``: four other talkers of the corpus at 10 dB SNR (koemo's noise mixer);
- ``quiet -20 dB``: the level 20 dB lower.

Each under two test-time groupings (``textneutral.shifted_input``): ``speaker`` (each test
speaker's clips normalised together: a session, which also adapts to the channel) and ``clip +
corpus`` (one request alone: the clean training corpus's statistics, as the bundle stores them;
until 2026-12-07 the shifted test clips were counted into them, which flattered a lone clip by
4-10 points). The text is the clean
service transcript (``eval.text``) for every channel: the recipe's model decides on the voice
(docs/voice.md), and transcribing every channel would cost more than the rest. Shifted features
are kept in the feature store, keyed by the channel. Weighted F1, mean ± sd over seeds.
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SR = 16000
CHANNELS = ("clean", "telephone", "reverb", "babble 10 dB", "quiet -20 dB")
MODES = ("speaker", "clip + corpus")


def telephone(audio: np.ndarray) -> np.ndarray:
    """8 kHz narrowband: resampled down and up (soxr's low-pass at ~3.8 kHz), 300-3,400 Hz kept,
    8-bit mu-law quantisation (G.711's companding)."""
    from koemo.data.audio import resample

    x = resample(resample(audio, SR, 8000), 8000, SR)[: audio.size]
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    spec[(freqs < 300) | (freqs > 3400)] = 0
    x = np.fft.irfft(spec, n=x.size)
    peak = max(float(np.abs(x).max()), 1e-9)
    y = np.sign(x / peak) * np.log1p(255 * np.abs(x / peak)) / np.log1p(255)
    y = np.round(y * 127) / 127
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(255)) / 255 * peak).astype(np.float32)


def reverb(audio: np.ndarray, uid: str, rt60: float = 0.5, wet: float = 0.3) -> np.ndarray:
    """A synthetic room: noise under an exponential decay (60 dB in ``rt60`` s), mixed ``wet``."""
    rng = np.random.default_rng(zlib.crc32(uid.encode()))
    t = np.arange(int(rt60 * SR)) / SR
    rir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    rir /= np.sqrt(np.sum(rir ** 2))
    n = audio.size + rir.size - 1
    tail = np.fft.irfft(np.fft.rfft(audio, n) * np.fft.rfft(rir, n), n)[: audio.size]
    out = (1 - wet) * audio + wet * tail * (np.abs(audio).max() / max(np.abs(tail).max(), 1e-9))
    return out.astype(np.float32)


@dataclass(frozen=True)
class Channel:
    """A test-time transform as the feature store takes it (``key`` names its entries)."""

    name: str
    pool: tuple = ()

    @property
    def key(self) -> str:
        return f"channel|{self.name}|v1"

    def __call__(self, utt, audio: np.ndarray) -> np.ndarray:
        if self.name == "telephone":
            return telephone(audio)
        if self.name == "reverb":
            return reverb(audio, utt.id)
        if self.name == "babble 10 dB":
            from koemo.asr.noise import NoiseCondition, NoiseMaker

            return NoiseMaker(NoiseCondition("babble", 10.0, 0), self.pool).apply(utt, audio)
        if self.name == "quiet -20 dB":
            return (audio * np.float32(0.1)).astype(np.float32)
        raise ValueError(self.name)


def main() -> None:
    from textneutral import arguments, shifted_input, test_set, weighted_f1

    args = arguments(__doc__)
    import dataclasses

    ts = test_set(args)
    recipe, source, utts, frames, store, settings = ts.recipe, ts.source, ts.utts, ts.frames, ts.store, ts.settings
    models, test, test_ids, text = ts.models, ts.test, ts.test_ids, ts.text
    scores: dict[str, dict[str, list[float]]] = {c: {m: [] for m in MODES} for c in CHANNELS}
    for channel in CHANNELS:
        shifted = dict(frames)
        if channel != "clean":
            shifted.update(store.speech(recipe.encoders.speech, test, **settings,
                                        transform=Channel(channel, tuple(utts))))
        views = {}
        for mode in MODES:
            regrouped = [dataclasses.replace(u, speaker=u.id) if mode != "speaker" and u.id in test_ids else u
                         for u in utts]
            views[mode] = shifted_input(recipe, frames, shifted, regrouped)
        for b in models:
            for mode in MODES:
                scores[channel][mode].append(weighted_f1(b, views[mode], text, test, source))
        print(f"{channel}: " + ", ".join(f"{m} {np.mean(scores[channel][m]):.3f}" for m in MODES), flush=True)
    print(f"\n| channel | {' | '.join(MODES)} |\n|---|" + "---:|" * len(MODES))
    for c in CHANNELS:  # mean ± sample sd over seeds, as the report
        print(f"| {c} | " + " | ".join(f"{np.mean(scores[c][m]):.3f} ± {np.std(scores[c][m], ddof=1):.3f}"
                                      for m in MODES) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
