"""Prosodic functionals: pitch, level and rhythm of signals whose answer is known; the extra layer
they become; the store, the trainer's switch and the service's wrapping of it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from koemo.encoders.prosody import FEATURES, Prosody, add_prosody, functionals, prosody_stage, with_prosody
from koemo.errors import KoemoError
from koemo.fusion.inputs import Moments, Normaliser, group_views

SR = 16000


def feature(values: np.ndarray, name: str) -> float:
    return float(values[FEATURES.index(name)])


def tone(f0: float, seconds: float = 2.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2 * f0 * t))).astype(np.float32)


@pytest.mark.parametrize("f0", [70.0, 110.0, 220.0, 330.0, 470.0])
def test_pitch_of_a_harmonic_tone_in_semitones(f0):
    v = functionals(tone(f0))
    want = 12 * np.log2(f0 / 27.5)
    for stat in ("mean", "p20", "p50", "p80"):
        assert abs(feature(v, f"f0_{stat}") - want) < 0.15, stat
    assert feature(v, "f0_cv") < 0.01 and feature(v, "f0_range20_80") < 0.3
    assert feature(v, "voiced_share") > 0.95 and feature(v, "hnr_mean") > 15


def test_a_glide_rises_at_its_rate():
    """A tone gliding up one octave in a second rises 12 semitones per second."""
    t = np.arange(SR) / SR
    phase = 2 * np.pi * 150 * (2 ** t - 1) / np.log(2)
    v = functionals((0.3 * np.sin(phase)).astype(np.float32))
    assert 10.0 < feature(v, "f0_rise") < 14.0
    assert feature(v, "f0_range20_80") > 6.0


def test_a_louder_copy_is_6_db_up_with_the_same_pitch_and_rhythm():
    x = tone(200.0)
    quiet, loud = functionals(x), functionals(2 * x)
    assert feature(loud, "level_mean") - feature(quiet, "level_mean") == pytest.approx(20 * np.log10(2), abs=0.05)
    for name in ("f0_mean", "voiced_share", "voiced_per_s", "alpha_voiced"):
        assert feature(loud, name) == pytest.approx(feature(quiet, name), abs=1e-3)


def test_rhythm_of_tone_bursts():
    """Five 0.3 s bursts with 0.2 s pauses: five voiced segments of ~0.3 s, pauses ~0.2 s."""
    burst, gap = tone(180.0, 0.3), np.zeros(int(0.2 * SR), np.float32)
    x = np.concatenate([np.concatenate([burst, gap]) for _ in range(5)])
    v = functionals(x)
    assert feature(v, "voiced_per_s") == pytest.approx(5 / 2.5, abs=0.01)
    assert feature(v, "voiced_len_mean") == pytest.approx(0.3, abs=0.04)
    assert feature(v, "pause_len_mean") == pytest.approx(0.2, abs=0.04)
    assert feature(v, "voiced_share") == pytest.approx(0.6, abs=0.06)


def test_silence_and_noise_give_finite_values_without_pitch():
    for x in (np.zeros(SR, np.float32), np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32)):
        v = functionals(x)
        assert v.shape == (len(FEATURES),) and np.isfinite(v).all()
        assert feature(v, "f0_mean") == 0.0 and feature(v, "hnr_mean") == 0.0
    enc = Prosody()
    assert enc.encode(np.zeros(10, np.float32)).shape == (1, len(FEATURES))  # padded to one frame


def test_the_functionals_become_one_more_layer_the_same_at_every_frame():
    frames = np.random.default_rng(0).normal(size=(5, 3, 64)).astype(np.float16)
    v = np.arange(41, dtype=np.float32)
    out = with_prosody(frames, v)
    assert out.shape == (5, 4, 64) and out.dtype == np.float16
    assert np.array_equal(out[:, :3], frames)
    assert np.array_equal(out[:, 3, :41], np.broadcast_to(v, (5, 41))) and not out[:, 3, 41:].any()
    flat = with_prosody(frames[:, 0], v)
    assert flat.shape == (5, 64 + 41) and np.array_equal(flat[:, 64:], np.broadcast_to(v, (5, 41)))
    with pytest.raises(KoemoError, match="41 functionals do not fit a layer of 8 dims"):
        with_prosody(frames[:, :, :8], v)
    with pytest.raises(KoemoError, match=r"frames of shape \(5,\); expected \[T, D\] or \[T, L, D\]"):
        with_prosody(frames[:, 0, 0], v)


def test_a_group_standardises_its_clips_functionals_and_the_stats_view_keeps_them():
    """Frame statistics of a group of constant-in-time functionals are the clips' statistics:
    the pooled view's mean half is each clip's functionals standardised across its group."""
    rng = np.random.default_rng(1)
    vectors = {f"c{i}": rng.normal(size=4).astype(np.float32) for i in range(4)}
    frames = {u: with_prosody(np.zeros((6, 1, 8), np.float32), v) for u, v in vectors.items()}  # equal lengths
    norm = Normaliser.fit("speaker", Moments.sum(Moments.of(a) for a in frames.values()), 3)
    view = group_views([frames], {u: "spk" for u in frames}, "stats", norm)[0]
    stacked = np.stack(list(vectors.values()))
    want = (stacked - stacked.mean(0)) / np.sqrt(stacked.var(0) + 1e-5)
    got = np.stack([view[u][0, 1, :4] for u in vectors])  # layer 1 (the functionals), mean half
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_store_caches_the_functionals_and_add_prosody_appends_them(emotiontts_utts):
    from koemo.encoders.store import FeatureStore

    utts = [dataclasses.replace(u) for u in emotiontts_utts[:2]]
    store = FeatureStore()
    frames = {u.id: np.zeros((7, 2, 64), np.float16) for u in utts}
    out = add_prosody(store, frames, utts, progress=False)
    assert store.extracted == 2
    assert out[utts[0].id].shape == (7, 3, 64)
    from koemo.data.audio import load_audio

    direct = functionals(load_audio(utts[0].audio))
    np.testing.assert_allclose(out[utts[0].id][0, 2, :41].astype(np.float32), direct, rtol=2e-3, atol=0.05)
    again = FeatureStore()
    add_prosody(again, frames, utts, progress=False)
    assert (again.hits, again.extracted) == (2, 0)
    # a clip whose functionals are not in the store, and may not be extracted: named, not a KeyError
    other = dataclasses.replace(emotiontts_utts[2])
    with pytest.raises(KoemoError, match=rf"no functionals for 1 clips \(first: {other.id}\)"):
        add_prosody(FeatureStore(), {**frames, other.id: frames[utts[0].id]}, utts + [other], progress=False,
                    extract_missing=False)


def test_the_service_stage_appends_them_to_both_paths():
    audio = tone(200.0, 1.0)
    encode, joint = prosody_stage(lambda a: np.zeros((3, 2, 64), np.float32),
                                  lambda a: ("문장", np.zeros((3, 2, 64), np.float32), {"asr": 0.1, "speech_encoder": 0.2}))
    want = functionals(audio)
    np.testing.assert_allclose(encode(audio)[0, 2, :41], want)
    text, frames, split = joint(audio)
    assert text == "문장" and frames.shape == (3, 3, 64) and split["asr"] == 0.1 and split["speech_encoder"] >= 0.2
    np.testing.assert_allclose(frames[1, 2, :41], want)
    assert prosody_stage(encode)[1] is None


def test_fine_tuning_refuses_the_switch():
    from koemo.config import Recipe
    from koemo.training.finetune import build_end_to_end

    recipe = Recipe()
    recipe.encoders.finetune, recipe.encoders.prosody = True, True
    with pytest.raises(KoemoError, match="prosody"):
        build_end_to_end(recipe, 4)
