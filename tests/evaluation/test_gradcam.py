"""Grad-CAM modality shares: sum to 1, and follow a model built to rely on one modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from koemo.errors import KoemoError
from koemo.evaluation.gradcam import modality_contribution, modality_scores, per_label_means, shares

LABELS = ["neutral", "happy", "sad", "angry"]


class TinyFusion(nn.Module):
    """Masked mean-pool per modality, project, concatenate, classify (a shallow fusion)."""

    def __init__(self, da=6, dt=5, hidden=8, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.audio_proj = nn.Linear(da, hidden)
        self.text_proj = nn.Linear(dt, hidden)
        self.head = nn.Linear(2 * hidden, classes)

    @staticmethod
    def pool(x, mask):
        m = mask.float().unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, audio, audio_mask, text, text_mask):
        a = torch.tanh(self.audio_proj(audio))
        t = torch.tanh(self.text_proj(text))
        return self.head(torch.cat([self.pool(a, audio_mask), self.pool(t, text_mask)], dim=1))


def batch(b=8, ta=7, tt=4, da=6, dt=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, ta, da, generator=g)
    text = torch.randn(b, tt, dt, generator=g)
    audio_mask = torch.ones(b, ta, dtype=torch.bool)
    audio_mask[0, 5:] = False
    text_mask = torch.ones(b, tt, dtype=torch.bool)
    text_mask[1, 2:] = False
    y = torch.arange(b) % 4
    return audio, audio_mask, text, text_mask, y


def test_shares_sum_to_one():
    model = TinyFusion()
    audio, am, text, tm, _ = batch()
    a, t, idx, logits = modality_scores(model, audio, am, text, tm)
    s = shares(a, t)
    assert s.shape == (8, 2)
    assert np.allclose(s.sum(axis=1), 1.0)
    assert (s > 0).all() and (s < 1).all()
    assert idx.tolist() == logits.argmax(1).tolist()


@pytest.mark.parametrize("layers", [None, {"audio": "audio_proj", "text": "text_proj"}])
def test_audio_only_model_gets_audio_share_one(layers):
    model = TinyFusion()
    with torch.no_grad():
        model.head.weight[:, 8:] = 0  # the text half of the classifier is cut off
    a, t, _, _ = modality_scores(model, *batch()[:4], layers=layers)
    s = shares(a, t)
    assert np.allclose(s[:, 0], 1.0) and np.allclose(s[:, 1], 0.0)


@pytest.mark.parametrize("layers", [None, {"audio": "audio_proj", "text": "text_proj"}])
def test_text_only_model_gets_text_share_one(layers):
    model = TinyFusion()
    with torch.no_grad():
        model.head.weight[:, :8] = 0
    s = shares(*modality_scores(model, *batch()[:4], layers=layers)[:2])
    assert np.allclose(s[:, 1], 1.0)


def test_share_moves_with_the_weight_of_a_modality():
    audio, am, text, tm, _ = batch()
    model = TinyFusion()
    base = shares(*modality_scores(model, audio, am, text, tm, target=torch.zeros(8, dtype=torch.long))[:2])
    with torch.no_grad():
        model.head.weight[:, 8:] *= 0.1  # text evidence ten times weaker
    weak = shares(*modality_scores(model, audio, am, text, tm, target=torch.zeros(8, dtype=torch.long))[:2])
    assert (weak[:, 0] > base[:, 0]).all()


def test_padding_is_left_out():
    model = TinyFusion()
    audio, am, text, tm, _ = batch()
    a1, t1, _, _ = modality_scores(model, audio, am, text, tm)
    audio2 = audio.clone()
    audio2[0, 5:] = 1e3  # garbage in padded frames, which the model masks out
    a2, t2, _, _ = modality_scores(model, audio2, am, text, tm)
    assert torch.allclose(a1, a2) and torch.allclose(t1, t2)


def test_model_mode_is_restored_and_no_grad_context_is_fine():
    model = TinyFusion().train()
    with torch.no_grad():
        a, t, _, _ = modality_scores(model, *batch()[:4])
    assert model.training
    assert (a > 0).all()
    assert all(p.grad is None for p in model.parameters())  # parameters' .grad untouched


def test_per_label_means_by_hand():
    share = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [np.nan, np.nan]])
    per, overall, undefined = per_label_means(share, np.array([0, 0, 2, 2]), LABELS)
    assert per["neutral"] == pytest.approx({"audio": 0.3, "text": 0.7, "n": 2})
    assert per["sad"] == pytest.approx({"audio": 0.9, "text": 0.1, "n": 1})
    assert "happy" not in per
    assert overall["audio"] == pytest.approx(0.5) and overall["n"] == 3
    assert undefined == 1


def test_modality_contribution_over_batches():
    model = TinyFusion()
    with torch.no_grad():
        model.head.weight[:, 8:] = 0
    res = modality_contribution(model, [batch(seed=1), batch(seed=2)], LABELS, target="true")
    assert res.shares.shape == (16, 2)
    assert res.target.tolist() == res.true.tolist()
    for label in LABELS:
        assert res.per_label[label]["audio"] == pytest.approx(1.0)
        assert res.per_label[label]["n"] == 4
    assert res.to_dict()["overall"]["audio"] == pytest.approx(1.0)


def test_plain_callable_and_errors():
    w = torch.randn(6, 4)

    def audio_only(audio, audio_mask, text, text_mask):  # ignores text entirely
        return audio.mean(1) @ w

    s = shares(*modality_scores(audio_only, *batch()[:4])[:2])
    assert np.allclose(s[:, 0], 1.0)
    with pytest.raises(KoemoError, match="nn.Module"):
        modality_scores(audio_only, *batch()[:4], layers={"audio": "x", "text": "y"})
    with pytest.raises(KoemoError, match="no layer 'nope'"):
        modality_scores(TinyFusion(), *batch()[:4], layers={"audio": "nope", "text": "text_proj"})
    with pytest.raises(KoemoError, match=r"\[B, T, D\]"):
        modality_scores(audio_only, torch.zeros(2, 3), None, torch.zeros(2, 3, 4), None)


@pytest.mark.parametrize("name", ["shallow", "fusion-transformer", "mult"])
def test_koemo_fusion_models_at_the_fusion_input(name):
    from koemo.fusion import build_fusion

    torch.manual_seed(0)
    model = build_fusion(name, audio_dim=6, text_dim=5, n_labels=4, hidden=16, heads=2)
    for at in ("input", "embed"):
        s = shares(*modality_scores(model, *batch()[:4], at=at)[:2])
        assert np.allclose(s.sum(axis=1), 1.0), at


@pytest.mark.parametrize("name,expected", [("audio-only", 0), ("text-only", 1)])
def test_single_modal_koemo_models_get_the_whole_share(name, expected):
    from koemo.fusion import build_fusion

    torch.manual_seed(0)
    model = build_fusion(name, audio_dim=6, text_dim=5, n_labels=4, hidden=16, heads=2)
    for at in ("input", "embed"):
        s = shares(*modality_scores(model, *batch()[:4], at=at)[:2])
        assert np.allclose(s[:, expected], 1.0), at


@pytest.mark.parametrize("name", ["fusion-transformer", "mult"])
def test_fusion_input_path_pools_audio_like_the_model(name):
    """With model.audio_pool, the embed path must see what forward sees: the same logits."""
    from koemo.fusion import build_fusion

    torch.manual_seed(0)
    model = build_fusion(name, audio_dim=6, text_dim=5, n_labels=4, hidden=16, heads=2, dropout=0.0,
                         audio_pool=2).eval()
    inputs = batch()[:4]
    logits = modality_scores(model, *inputs, at="embed")[3]
    with torch.no_grad():
        torch.testing.assert_close(logits, model(*inputs), atol=1e-5, rtol=1e-5)
