"""Speaker normalisation and the views a head reads (koemo.fusion.inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from koemo.errors import KoemoError
from koemo.fusion import build_fusion
from koemo.fusion.inputs import Moments, Normaliser, clip_stats, group_views, normalise, standardised_stats, view


def test_moments_combine_like_the_frames_they_summarise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(2, 3, size=(40, 3, 5)), rng.normal(-1, 1, size=(25, 3, 5))
    total = Moments.of(a) + Moments.of(b)
    mean, sd = total.mean_sd()
    both = np.concatenate([a, b])
    np.testing.assert_allclose(mean, both.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sd, both.std(0), rtol=1e-4)
    assert total.clips == 2 and total.n == 65


def test_each_speaker_is_standardised_by_their_own_frames_and_small_groups_by_the_corpus():
    rng = np.random.default_rng(1)
    clips = {f"s{s}-{k}": rng.normal(10 * s, 1 + s, size=(30, 4)) for s in range(3) for k in range(4)}
    clips["lone"] = rng.normal(50, 1, size=(30, 4))
    groups = {u: u.split("-")[0] for u in clips}
    corpus = Moments.sum(Moments.of(a) for a in clips.values())
    norm = Normaliser.fit("speaker", corpus, min_clips=3)
    (views,) = group_views([clips], groups, "frames", norm)
    for s in range(3):
        mine = np.concatenate([views[f"s{s}-{k}"] for k in range(4)])
        np.testing.assert_allclose(mine.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(mine.std(0), 1, atol=1e-3)
    # one clip is never normalised by itself (its mean is where the emotion is): corpus statistics
    np.testing.assert_allclose(views["lone"], (clips["lone"] - norm.corpus_mean) / norm.corpus_sd, rtol=1e-5)
    assert abs(views["lone"].mean()) > 1
    off = Normaliser.fit("none", corpus)
    assert off.stats_for(Moments.of(clips["s0-0"]))[0] is off.corpus_mean
    with pytest.raises(KoemoError, match="normalisation 'session'"):
        Normaliser.fit("session", corpus)


def test_stats_view_is_mean_and_std_over_time():
    x = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    s = clip_stats(x)
    assert s.shape == (1, 2, 4)
    np.testing.assert_allclose(s[0, :, :2], x.mean(0))
    np.testing.assert_allclose(s[0, :, 2:], x.std(0))
    with pytest.raises(KoemoError, match="speech view 'pooled'"):
        view(x, "pooled")


def test_a_view_keeps_the_layers_asked_for_after_normalising_them_all():
    """encoders.speech_layers: every layer is standardised by its own statistics, then the head
    reads only those asked for, in that order; asking for a layer that is not there is refused."""
    rng = np.random.default_rng(4)
    x = rng.normal(1, 2, size=(20, 4, 3)).astype(np.float32)
    mean, sd = rng.normal(size=(4, 3)).astype(np.float32), rng.uniform(0.5, 2, size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(view(x, "stats", mean, sd, layers=[3, 1]), view(x, "stats", mean, sd)[:, [3, 1]])
    np.testing.assert_array_equal(view(x, "frames", mean, sd, pool=2, layers=[0]), view(x, "frames", mean, sd, pool=2)[:, [0]])
    assert view(x, "stats", mean, sd, layers=[2]).shape == (1, 1, 6)
    clips = {"a": x, "b": x + 1, "c": x - 1}
    (views,) = group_views([clips], {u: "spk" for u in clips}, "stats", Normaliser.fit("speaker", Moments.of(x), 2),
                           layers=[1, 2])
    (whole,) = group_views([clips], {u: "spk" for u in clips}, "stats", Normaliser.fit("speaker", Moments.of(x), 2))
    np.testing.assert_array_equal(views["b"], whole["b"][:, [1, 2]])
    with pytest.raises(KoemoError, match="need every layer"):
        view(x[:, 0], "stats", layers=[0])
    with pytest.raises(KoemoError, match=r"layers \[4\]: the encoder gives layers 0-3"):
        view(x, "stats", layers=[4])


def test_a_clips_statistics_standardise_like_its_frames():
    """A batch keeps each clip's statistics and normalises them once every group is summed: the
    result must be the statistics of the standardised frames, for any group's mean and sd."""
    rng = np.random.default_rng(3)
    x = rng.normal(4, 3, size=(80, 3, 6)).astype(np.float32)
    mean, sd = rng.normal(2, 1, size=(3, 6)).astype(np.float32), rng.uniform(0.5, 3, size=(3, 6)).astype(np.float32)
    want = clip_stats(normalise(x, mean, sd))
    np.testing.assert_allclose(standardised_stats(clip_stats(x), mean, sd), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(view(x, "stats", mean, sd), want, rtol=1e-4, atol=1e-5)
    assert standardised_stats(clip_stats(x), None, None) is not None
    np.testing.assert_array_equal(standardised_stats(clip_stats(x), None, None), clip_stats(x))


@pytest.mark.parametrize("mix", ["weighted", "concat"])
def test_layer_axis_and_standardisation_inside_the_model(mix):
    torch.manual_seed(0)
    model = build_fusion("shallow", 4, 3, 2, hidden=8, heads=2, dropout=0.0, audio_layers=3, standardise=True,
                         layer_mix=mix, pooling="stats")
    audio = [np.random.default_rng(i).normal(5, 2, size=(1, 3, 4)).astype(np.float32) for i in range(20)]
    text = [np.random.default_rng(i).normal(-3, 4, size=(2, 3)).astype(np.float32) for i in range(20)]
    model.fit_standardiser(audio, text)
    np.testing.assert_allclose(model.audio_mean.numpy(), np.concatenate(audio).mean(0), rtol=1e-5)
    a = torch.from_numpy(np.stack(audio))
    t = torch.from_numpy(np.stack(text))
    logits = model(a, torch.ones(20, 1, dtype=torch.bool), t, torch.ones(20, 2, dtype=torch.bool))
    assert logits.shape == (20, 2) and torch.isfinite(logits).all()
    if mix == "weighted":
        assert model.layer_mix.weights.shape == (3,) and model.audio_dim == 4
    else:
        assert model.audio_dim == 12 and model.input_audio_dim == 4
    # a standardised model sees shifted inputs the same way as the originals
    shifted = model(a * 1.0, torch.ones(20, 1, dtype=torch.bool), t, torch.ones(20, 2, dtype=torch.bool))
    torch.testing.assert_close(logits, shifted)
