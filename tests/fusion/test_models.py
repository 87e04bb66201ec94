"""Each fusion: output shape, padding invariance, sentence vectors, Grad-CAM hook."""

from __future__ import annotations

import pytest
import torch

from koemo.errors import KoemoError
from koemo.fusion import FUSIONS, build_fusion, grad_x_activation
from koemo.fusion.base import pool_frames

NAMES = ["audio-only", "text-only", "shallow", "fusion-transformer", "mult"]
DA, DT, C = 6, 5, 4


def make(name, **kw):
    torch.manual_seed(0)
    model = build_fusion(name, DA, DT, C, hidden=8, heads=2, dropout=0.0, **kw)
    return model.eval()


def batch(lengths_a, lengths_t, pad_a=0, pad_t=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths_a)
    Ta, Tt = max(lengths_a) + pad_a, max(lengths_t) + pad_t
    audio = torch.randn(B, Ta, DA, generator=g)
    text = torch.randn(B, Tt, DT, generator=g)
    am = torch.arange(Ta)[None] < torch.tensor(lengths_a)[:, None]
    tm = torch.arange(Tt)[None] < torch.tensor(lengths_t)[:, None]
    return audio, am, text, tm


def test_registry_lists_every_model():
    assert set(NAMES) <= set(FUSIONS.names())
    with pytest.raises(KoemoError, match="unknown fusion model 'nope'"):
        FUSIONS.get("nope")
    with pytest.raises(KoemoError, match="divisible"):
        build_fusion("mult", DA, DT, C, hidden=10, heads=3)


def test_pool_frames_averages_valid_frames_only():
    x = torch.arange(10, dtype=torch.float32).reshape(1, 5, 2)  # frames (0,1) (2,3) (4,5) (6,7) (8,9)
    mask = torch.tensor([[True, True, True, False, False]])
    pooled, pmask = pool_frames(x, mask, 2)
    assert pmask.tolist() == [[True, True, False]]
    # window 1 holds one valid frame (4, 5): its mean is that frame, not (4+6)/2
    torch.testing.assert_close(pooled[0, :2], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    same, same_mask = pool_frames(x, mask, 1)
    assert same is x and same_mask is mask
    with pytest.raises(KoemoError, match="audio_pool"):
        build_fusion("shallow", DA, DT, C, audio_pool=0)


def test_audio_pool_changes_what_attention_sees():
    audio, am, text, tm = batch([7, 3, 5], [4, 2, 4])
    assert not torch.allclose(make("audio-only")(audio, am, text, tm),
                              make("audio-only", audio_pool=3)(audio, am, text, tm))


@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name):
    model = make(name)
    audio, am, text, tm = batch([7, 3, 5], [4, 2, 4])
    out = model(audio, am, text, tm)
    assert out.shape == (3, C)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("pool", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_the_result(name, pool):
    model = make(name, audio_pool=pool)
    audio, am, text, tm = batch([7, 3, 5], [4, 2, 4])
    ref = model(audio, am, text, tm)
    # the same utterances padded further, with garbage in the padding
    Ta, Tt = audio.shape[1] + 6, text.shape[1] + 3
    audio2 = torch.full((3, Ta, DA), 9.0)
    text2 = torch.full((3, Tt, DT), -7.0)
    audio2[:, : audio.shape[1]] = torch.where(am[..., None], audio, torch.tensor(5.0))
    text2[:, : text.shape[1]] = torch.where(tm[..., None], text, torch.tensor(3.0))
    am2 = torch.zeros(3, Ta, dtype=torch.bool)
    am2[:, : am.shape[1]] = am
    tm2 = torch.zeros(3, Tt, dtype=torch.bool)
    tm2[:, : tm.shape[1]] = tm
    out = model(audio2, am2, text2, tm2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # and each utterance alone (no padding at all) gives its row
    for i in range(3):
        la, lt = int(am[i].sum()), int(tm[i].sum())
        single = model(audio[i:i + 1, :la], am[i:i + 1, :la], text[i:i + 1, :lt], tm[i:i + 1, :lt])
        torch.testing.assert_close(single[0], ref[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_sentence_vector_text(name):
    model = make(name)
    audio, am, text, tm = batch([7, 3], [1, 1])
    assert text.shape[1] == 1
    out = model(audio, am, text, tm)
    assert out.shape == (2, C) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_empty_text_row_gives_finite_output(name):
    model = make(name)
    audio, am, text, tm = batch([4, 3], [3, 3])
    tm[1] = False
    text[1] = 0.0
    assert torch.isfinite(model(audio, am, text, tm)).all()


@pytest.mark.parametrize("name", NAMES)
def test_modalities_really_used(name):
    model = make(name)
    audio, am, text, tm = batch([5, 4], [3, 3])
    ref = model(audio, am, text, tm)
    changed_audio = model(audio + 1.0, am, text, tm)
    changed_text = model(audio, am, text + 1.0, tm)
    reads_audio = not torch.allclose(ref, changed_audio)
    reads_text = not torch.allclose(ref, changed_text)
    assert reads_audio == (name != "text-only")
    assert reads_text == (name != "audio-only")


@pytest.mark.parametrize("name", NAMES)
def test_grad_x_activation(name):
    model = make(name)
    audio, am, text, tm = batch([5, 4], [3, 2])
    scores, logits = grad_x_activation(model, audio, am, text, tm)
    assert scores.shape == (2, 2)
    torch.testing.assert_close(logits, model(audio, am, text, tm))
    if name == "audio-only":
        assert (scores[:, 1] == 0).all() and (scores[:, 0] != 0).all()
    elif name == "text-only":
        assert (scores[:, 0] == 0).all() and (scores[:, 1] != 0).all()
    else:
        assert (scores != 0).all()


@pytest.mark.parametrize("frames", [1, 4])
def test_masked_mean_counts_only_the_kept_frames_and_a_masked_out_clip_is_zero(frames):
    import torch

    from koemo.fusion.base import masked_mean

    x = torch.randn(4, frames, 6, requires_grad=True)
    mask = torch.ones(4, frames, dtype=torch.bool)
    mask[1] = False  # a blanked modality (modality dropout): no frames
    mask[2, 1:] = False  # one frame kept
    got = masked_mean(x, mask)
    for b in range(4):
        kept = x[b][mask[b]]
        want = kept.mean(0) if len(kept) else torch.zeros(6)
        torch.testing.assert_close(got[b], want, rtol=0, atol=1e-6)
    got.sum().backward()  # the blanked clip gets no gradient
    assert torch.equal(x.grad[1], torch.zeros(frames, 6))


def test_the_linear_head_scores_several_texts_beside_one_speech_input_as_forward_does():
    """LinearProbe.forward_paths (the stacked trainer's CR step: one clip, its golden and its STT
    text) equals forward() of each (speech, text) pair, with standardised inputs, token and
    sentence-vector text and an empty transcript."""
    import numpy as np

    model = make("linear")
    model.configure_inputs(standardise=True)
    g = torch.Generator().manual_seed(3)
    model.fit_standardiser([np.random.default_rng(k).normal(2.0, 3.0, (4, DA)) for k in range(5)],
                           [np.random.default_rng(9 + k).normal(-1.0, 0.5, (3, DT)) for k in range(5)])
    audio, am, text, tm = batch([7, 3, 5], [4, 2, 4])
    other = torch.randn(3, 4, DT, generator=g)
    om = torch.tensor([[True] * 4, [False] * 4, [True, True, False, False]])  # the second one empty
    paths = model.forward_paths(audio, am, torch.stack([text, other]), torch.stack([tm, om]))
    assert paths.shape == (2, 3, C)
    torch.testing.assert_close(paths[0], model(audio, am, text, tm), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(paths[1], model(audio, am, other, om), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(paths[0], paths[1])


@pytest.mark.parametrize("name", ["linear", "shallow"])
def test_standardised_inputs_are_what_the_head_reads(name):
    """model.standardise: both modalities are standardised by the training statistics before the
    head, so a fitted model equals the same weights on inputs standardised by hand."""
    import numpy as np

    speech = [np.random.default_rng(k).normal(2.0, 3.0, (4, DA)) for k in range(5)]
    words = [np.random.default_rng(9 + k).normal(-1.0, 0.5, (3, DT)) for k in range(5)]
    fitted = make(name)
    fitted.configure_inputs(standardise=True)
    fitted.fit_standardiser(speech, words)
    plain = make(name)
    plain.load_state_dict({k: v for k, v in fitted.state_dict().items() if not k.endswith(("_mean", "_sd"))})
    a, t = np.concatenate(speech), np.concatenate(words)
    audio, am, text, tm = batch([7, 3, 5], [4, 2, 4])
    by_hand = ((audio - torch.tensor(a.mean(0), dtype=torch.float32)) / torch.tensor(a.std(0), dtype=torch.float32),
               (text - torch.tensor(t.mean(0), dtype=torch.float32)) / torch.tensor(t.std(0), dtype=torch.float32))
    torch.testing.assert_close(fitted(audio, am, text, tm), plain(by_hand[0], am, by_hand[1], tm), rtol=1e-4, atol=1e-5)
