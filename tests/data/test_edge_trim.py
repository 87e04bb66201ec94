"""``encoders.trim_margin``: training clips cut to their speech as the service cuts a short
recording, keyed apart in the feature store, composed with augmentation, and the margin a bundle
was trained with becoming the service's default."""

from __future__ import annotations

import dataclasses

import numpy as np

from koemo.config import Recipe
from koemo.data.audio import SAMPLE_RATE, EdgeTrim, speech_bounds

SR = SAMPLE_RATE


def padded_tone(before_s: float = 1.0, after_s: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(2 * np.pi * 180 * np.arange(SR) / SR)).astype(np.float32)
    return np.concatenate([rng.normal(0, 1e-4, int(before_s * SR)).astype(np.float32), speech,
                           rng.normal(0, 1e-4, int(after_s * SR)).astype(np.float32)])


class Padded:
    """A stand-in augmentation that adds silence (the store's transform protocol: ``key``,
    ``label``, a call): cut after it, its silence would be gone."""

    key, label = "padded", "augmented"

    def __call__(self, utt, audio):
        return np.concatenate([np.zeros(SR, np.float32), audio * 2])


def test_the_cut_keeps_the_speech_and_the_margin_and_runs_the_augmentation_after_it():
    audio = padded_tone()
    assert speech_bounds(audio, 0.25) == (0.75, 2.25)
    cut = EdgeTrim(0.25)(None, audio)
    assert len(cut) == int(1.5 * SR)
    np.testing.assert_array_equal(cut, audio[int(0.75 * SR): int(2.25 * SR)])
    augmented = EdgeTrim(0.25, then=Padded())(None, audio)
    np.testing.assert_array_equal(augmented[SR:], 2 * cut)  # cut first, then augmented
    assert len(augmented) == SR + len(cut)
    # each margin, and each augmentation on top, is its own set of store entries
    keys = {EdgeTrim(0.25).key, EdgeTrim(0.1).key, EdgeTrim(0.25, then=Padded()).key}
    assert len(keys) == 3 and EdgeTrim(0.25, then=Padded()).label == "cut to speech, augmented"


def test_the_service_cut_and_the_training_cut_are_one_rule():
    from koemo.serving.segment import SegmentConfig, trimmed_span

    audio = padded_tone(0.6, 0.4) * 0.01  # level-relative
    for margin in (0.0, 0.1, 0.25):
        span = trimmed_span(audio, SegmentConfig(trim_margin_s=margin))
        assert (span.start, span.end) == speech_bounds(audio, margin)


class RecordingStore:
    """What ``speech_frames`` asks the feature store for."""

    def __init__(self):
        self.transforms = []

    def speech(self, name, utts, extract_missing, *, progress=True, transform=None, **settings):
        self.transforms.append(transform)
        return {u.id: np.zeros((3, 8), np.float16) for u in utts}


def test_a_recipe_with_a_margin_reads_cut_clips_and_their_augmented_copies(emotiontts_utts):
    from koemo.training.features import audio_copies, speech_frames

    utts = emotiontts_utts[:2]
    recipe = Recipe()
    store = RecordingStore()
    speech_frames(store, recipe.encoders, utts)
    assert store.transforms == [None]  # as recorded by default: cached features stay valid
    recipe.encoders.trim_margin = 0.25
    speech_frames(store, recipe.encoders, utts)
    assert store.transforms[-1] == EdgeTrim(0.25)
    recipe.augment.copies, recipe.augment.volume_db = 1, [-3.0, 3.0]
    audio_copies(recipe.augment, store, recipe.encoders, utts, progress=False)
    trim = store.transforms[-1]
    assert isinstance(trim, EdgeTrim) and trim.margin_s == 0.25 and trim.then.key.startswith("aug|")


def test_the_margin_leaves_old_fingerprints_alone_and_changes_new_ones():
    from koemo.data.splits import Fold
    from koemo.training.trainer import _fingerprint

    fold = Fold("f", ["a"], [], ["b"])
    cfg = dataclasses.asdict(Recipe())
    old = {**cfg, "encoders": {k: v for k, v in cfg["encoders"].items() if k != "trim_margin"}}
    assert _fingerprint(cfg, fold, "data", 1) == _fingerprint(old, fold, "data", 1)  # grids stay cached
    cut = {**cfg, "encoders": {**cfg["encoders"], "trim_margin": 0.25}}
    assert _fingerprint(cut, fold, "data", 1) != _fingerprint(cfg, fold, "data", 1)


def test_the_range_decides_what_counts_as_speech_in_service_and_training():
    from koemo.serving.segment import SegmentConfig, trimmed_span

    loud = (0.3 * np.sin(2 * np.pi * 180 * np.arange(SR) / SR)).astype(np.float32)
    audio = np.concatenate([loud, loud * np.float32(10 ** (-30 / 20)), np.zeros(SR, np.float32)])  # a -30 dB tail
    assert speech_bounds(audio, 0.0, 40.0) == (0.0, 2.0)  # within 40 dB: speech
    assert speech_bounds(audio, 0.0, 20.0) == (0.0, 1.0)  # not within 20 dB
    span = trimmed_span(audio, SegmentConfig(trim_margin_s=0.0, trim_range_db=20.0))
    assert (span.start, span.end) == (0.0, 1.0)
    assert EdgeTrim(0.0, range_db=20.0)(None, audio).size == SR
