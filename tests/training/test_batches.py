"""Batches: the resident padded copy of a table gives exactly what padding each batch gives."""

from __future__ import annotations

import numpy as np
import torch

from koemo.training.data import FeatureData, Resident, pad
from koemo.training.steps import blank_modalities


def _data(rng, n=12):
    ids = [f"u{i}" for i in range(n)]
    audio = {u: rng.standard_normal((int(rng.integers(1, 9)), 3, 4)).astype(np.float16) for u in ids}
    gold = {u: rng.standard_normal((int(rng.integers(1, 5)), 5)).astype(np.float32) for u in ids}
    asr = {u: rng.standard_normal((int(rng.integers(0, 5)), 5)).astype(np.float32) for u in ids}
    return ids, FeatureData(audio, {"gold": gold, "asr:x": asr}, {u: "a" for u in ids}, ["a"])


def test_resident_batches_equal_padded_batches_and_are_copies():
    rng = np.random.default_rng(0)
    ids, data = _data(rng)
    for trial in range(5):
        pick = list(rng.choice(ids, size=5, replace=False))
        pairs = [(u, "gold") for u in pick] + [(u, "asr:x") for u in pick] if trial % 2 else [(u, "gold") for u in pick]
        got = data.batch(pairs)
        want_a = pad([data.audio[u] for u, _ in pairs])
        want_t = pad([data.text[s][u] for u, s in pairs])
        for key, want in (("audio", want_a), ("text", want_t)):
            assert got[key].dtype == want[0].dtype == torch.float32
            torch.testing.assert_close(got[key], want[0], rtol=0, atol=0)
            assert torch.equal(got[f"{key}_mask"], want[1])
    resident = data._resident_of(data.audio)
    assert isinstance(resident, Resident)
    before = resident.tensor.clone()
    batch = data.batch([(u, "gold") for u in ids[:4]])
    blank_modalities(batch, torch.tensor([True, False, False, False]), torch.tensor([False, True, False, False]))
    assert torch.equal(resident.tensor, before)  # a step's in-place blanking never reaches the copy


def test_a_table_over_the_budget_or_grown_is_padded_per_batch(monkeypatch):
    rng = np.random.default_rng(1)
    ids, data = _data(rng)
    monkeypatch.setattr(Resident, "BUDGET", 0)
    assert data._resident_of(data.audio) is None
    got = data.batch([(u, "gold") for u in ids[:3]])
    torch.testing.assert_close(got["audio"], pad([data.audio[u] for u in ids[:3]])[0], rtol=0, atol=0)
    monkeypatch.setattr(Resident, "BUDGET", 2**30)
    data._resident.clear()
    data.batch([(ids[0], "gold")])
    data.audio["new"] = np.ones((2, 3, 4), np.float32)  # a table that grew is copied again
    data.text["gold"]["new"] = np.ones((1, 5), np.float32)
    got = data.batch([("new", "gold")])
    assert got["audio"].shape == (1, 2, 3, 4) and float(got["audio"].sum()) == 24.0


def test_text_means_give_a_mean_only_head_what_every_token_gives_it():
    """Batches of mean text vectors (``text_means``) predict what the tokens predict, for the
    heads that read the mean only; an entry without vectors is a zero vector either way."""
    from koemo.config import ModelConfig
    from koemo.fusion import build_from_config

    rng = np.random.default_rng(2)
    ids, data = _data(rng)
    data.text["asr:x"][ids[0]] = np.zeros((0, 5), np.float32)  # an empty transcript
    pairs = [(u, "asr:x") for u in ids]
    tokens, means = data.batch(pairs), data.batch(pairs, text_means=True)
    assert means["text"].shape == (len(ids), 1, 5) and bool(means["text_mask"].all())
    for i, u in enumerate(ids):
        want = data.text["asr:x"][u].mean(0) if len(data.text["asr:x"][u]) else np.zeros(5)
        np.testing.assert_allclose(means["text"][i, 0].numpy(), want, rtol=1e-6, atol=1e-6)
    torch.manual_seed(0)
    for fusion in ("linear", "shallow"):
        model = build_from_config(ModelConfig(fusion=fusion, hidden=8, standardise=True, pooling="stats"), 4, 5, 3, 3)
        assert model.text_mean_only
        model.fit_standardiser([a.mean(0, keepdims=True) for a in data.audio.values()],
                               list(data.text["gold"].values()))
        model.eval()
        stats = {k: v for k, v in tokens.items()}
        stats["audio"], stats["audio_mask"] = tokens["audio"].mean(1, keepdim=True), tokens["audio_mask"][:, :1] | True
        with torch.no_grad():
            a = model(stats["audio"], stats["audio_mask"], tokens["text"], tokens["text_mask"])
            b = model(stats["audio"], stats["audio_mask"], means["text"], means["text_mask"])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_speech_means_give_a_mean_only_head_what_its_frames_give_it():
    """Batches of each clip's mean of its pooled windows (``speech_means``) predict what its
    frames predict for the heads that read only that mean: standardised, with a learned layer
    mix, windows of 3 frames with a shorter last one, clips shorter than a window. Heads that
    read the frames (and end-to-end modules) get frames."""
    from koemo.config import ModelConfig
    from koemo.fusion import build_from_config
    from koemo.fusion.base import speech_mean_window
    from koemo.training.data import mean_vector

    rng = np.random.default_rng(3)
    ids, data = _data(rng)  # speech [T, 3 layers, 4], T 1..8
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2) ** 2  # windows of 3: frames 0-2, 3-5, 6
    np.testing.assert_allclose(mean_vector(x, 3)[0], (x[0:3].mean(0) + x[3:6].mean(0) + x[6]) / 3, rtol=1e-6)
    assert not np.allclose(mean_vector(x, 3), mean_vector(x))  # not the frames' plain mean
    pairs = [(u, "gold") for u in ids]
    frames, means = data.batch(pairs), data.batch(pairs, speech_means=3)
    assert means["audio"].shape == (len(ids), 1, 3, 4) and bool(means["audio_mask"].all())
    torch.manual_seed(0)
    for fusion, mix in (("shallow", "weighted"), ("shallow", "concat"), ("linear", "weighted")):
        cfg = ModelConfig(fusion=fusion, hidden=8, standardise=True, pooling="mean", layer_mix=mix, audio_pool=3)
        model = build_from_config(cfg, 4, 5, 3, 3)
        assert speech_mean_window(model) == 3
        model.fit_standardiser(list(data.audio.values()), list(data.text["gold"].values()))
        if mix == "weighted":
            model.layer_mix.weights.data = torch.tensor([0.5, -1.0, 2.0])
        model.eval()
        with torch.no_grad():
            a = model(frames["audio"], frames["audio_mask"], frames["text"], frames["text_mask"])
            b = model(means["audio"], means["audio_mask"], means["text"], means["text_mask"])
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for fusion in ("fusion-transformer", "mult", "audio-only"):
        assert speech_mean_window(build_from_config(ModelConfig(fusion=fusion, hidden=8, heads=2, audio_pool=3), 4, 5, 3, 3)) == 0
