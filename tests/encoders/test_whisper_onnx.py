"""The Whisper encoder under onnxruntime (koemo.encoders.whisper_onnx): a tiny encoder built from a
config exports, matches PyTorch and is cached; a wrong export is refused and leaves nothing;
``--runtime onnx`` reaches the speech encoder; the real encoder's features equal PyTorch's
within float16 (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from koemo.encoders import whisper_onnx as wo
from koemo.errors import KoemoError


def tiny_encoder(layers=2):
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    import torch

    torch.manual_seed(0)
    config = WhisperConfig(d_model=16, num_mel_bins=8, encoder_layers=layers, encoder_attention_heads=2,
                           encoder_ffn_dim=32, max_source_positions=1500)
    return WhisperEncoder(config).eval()


def _torch(enc, mel, stacked):
    import torch

    with torch.inference_mode():
        res = enc(torch.from_numpy(mel), output_hidden_states=stacked)
        return (torch.stack(res.hidden_states, dim=2) if stacked else res.last_hidden_state).numpy()


@pytest.mark.parametrize("stacked", [True, False])
def test_export_equals_pytorch_for_any_number_of_windows(tmp_path, stacked):
    enc = tiny_encoder()
    out = tmp_path / "enc.onnx"
    diff = wo.export(enc, out, stacked)
    assert 0 <= diff <= wo.REL_TOLERANCE
    run = wo._session(out)
    mel = np.random.default_rng(1).uniform(-1, 1, (3, 8, 3000)).astype(np.float32)  # 3 windows, not the example's 2
    got, ref = run(mel), _torch(enc, mel, stacked)
    assert got.shape == ref.shape == ((3, 1500, 3, 16) if stacked else (3, 1500, 16))
    assert np.abs(got - ref).max() <= wo.REL_TOLERANCE * np.abs(ref).max()
    # a clip's own frames (encoders.speech_window: clip): any even number of mel frames up to 3000
    short = mel[:1, :, :426]
    got, ref = run(short), _outputs(enc, short, stacked)
    assert got.shape == ((1, 213, 3, 16) if stacked else (1, 213, 16))
    assert np.abs(got - ref).max() <= wo.REL_TOLERANCE * np.abs(ref).max()


def _outputs(enc, mel, stacked):
    import torch

    from koemo.encoders.whisper_graph import encoder_outputs

    with torch.inference_mode():
        return encoder_outputs(enc, torch.from_numpy(mel), stacked).numpy()


@pytest.mark.parametrize("stacked", [True, False])
def test_koemos_encoder_forward_is_transformers_on_a_whole_window_and_reads_shorter_ones(stacked):
    enc = tiny_encoder(layers=3)
    mel = np.random.default_rng(2).uniform(-1, 1, (2, 8, 3000)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(enc, mel, stacked), _torch(enc, mel, stacked))
    short = _outputs(enc, mel[:, :, :300], stacked)
    assert short.shape[1] == 150
    # the first frames see only the clip, not 30 s of padding: other values than the whole window's
    assert not np.allclose(short, _torch(enc, mel, stacked)[:, :150])


def _merged(enc, mel, frames, group, stacked):
    import torch

    from koemo.encoders.whisper_graph import merged_outputs

    with torch.inference_mode():
        return merged_outputs(enc, torch.from_numpy(mel), frames, group, stacked).numpy()


@pytest.mark.parametrize("stacked", [True, False])
def test_merged_padding_tokens_stand_exactly_for_identical_frames(stacked):
    """``30s-merged``: a token enters as the mean of its frames and is weighed as all of them, so
    where the padding frames are identical (no positions, constant log-mel after the clip) the
    merged pass equals the whole pass, whatever the group size: every frame but the last group's
    (the convolutions' zero edge makes the window's last frame unlike the other padding)."""
    import torch

    enc = tiny_encoder(layers=3)
    with torch.no_grad():
        enc.embed_positions.weight.zero_()
    mel = np.full((1, 8, 3000), -0.7, np.float32)
    mel[:, :, :40] = np.random.default_rng(3).uniform(-1, 1, (1, 8, 40))  # the clip: 20 encoder frames
    whole = _outputs(enc, mel, stacked)
    for group in (1, 8, 7):  # 7: a last group of other size (1470 = 7 x 210; 30 + 1470)
        got = _merged(enc, mel, 30, group, stacked)
        assert got.shape == whole.shape == ((1, 1500, 4, 16) if stacked else (1, 1500, 16))
        np.testing.assert_allclose(got[:, :1488], whole[:, :1488], atol=1e-4 * np.abs(whole).max())
    odd = _merged(enc, mel, 33, 8, stacked)  # 1467 padding frames: 183 groups of 8 and one of 3
    np.testing.assert_allclose(odd[:, :1488], whole[:, :1488], atol=1e-4 * np.abs(whole).max())


def test_merged_padding_changes_the_clip_frames_a_little_where_padding_frames_differ():
    """With positions the padding frames differ, so a token is an average: the kept frames move,
    but far less than without the padding (the ``clip`` window); keeping every frame apart is
    the whole pass."""
    enc = tiny_encoder(layers=3)
    mel = np.full((1, 8, 3000), -0.7, np.float32)
    mel[:, :, :200] = np.random.default_rng(4).uniform(-1, 1, (1, 8, 200))
    whole = _outputs(enc, mel, True)[:, :100]
    merged = _merged(enc, mel, 150, 8, True)[:, :100]
    clip = _outputs(enc, mel[:, :, :300], True)[:, :100]
    merged_err, clip_err = np.abs(merged - whole).mean(), np.abs(clip - whole).mean()
    assert 0 < merged_err < clip_err / 3
    # what enters the blocks for the padding: each group's mean front end, over each of its frames
    front, merged_front = _outputs(enc, mel, True)[0, 150:, 0], _merged(enc, mel, 150, 8, True)[0, 150:, 0]
    means = np.repeat(front[:1344].reshape(168, 8, -1).mean(1), 8, axis=0)  # 168 groups of 8, then one of 6
    np.testing.assert_allclose(merged_front[:1344], means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(merged_front[1344:], front[1344:].mean(0, keepdims=True).repeat(6, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_merged(enc, mel, 1500, 8, True), _outputs(enc, mel, True))


def test_an_export_that_differs_from_pytorch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    real = wo._session
    monkeypatch.setattr(wo, "_session", lambda path: (lambda mel: real(path)(mel) * 1.001))
    out = tmp_path / "enc.onnx"
    with pytest.raises(KoemoError, match=r"enc\.onnx: the ONNX Whisper encoder differs from PyTorch by 1\.0\de-03 of "
                                         r"the largest output \(allowed 0\.0001\); use --runtime torch$"):
        wo.export(tiny_encoder(), out, stacked=True)
    assert list(tmp_path.iterdir()) == []


def test_the_export_is_made_once_per_setting_and_reused(monkeypatch):
    loads = []

    def load():
        loads.append(1)
        return tiny_encoder(layers=1)

    first = wo.onnx_encoder(load, "abc", None, True)
    again = wo.onnx_encoder(load, "abc", None, True)
    assert len(loads) == 1
    mel = np.zeros((1, 8, 3000), np.float32)
    np.testing.assert_array_equal(first(mel), again(mel))
    paths = {wo.onnx_path(*key) for key in [("abc", None, True), ("abd", None, True), ("abc", 3, False),
                                            ("abc", None, False)]}
    assert len(paths) == 4 and wo.onnx_path("abc", None, True).is_file()


def test_runtime_is_checked_and_ct2_keeps_its_own(require_model):
    from koemo.encoders.whisper import WhisperBaseEncoder

    require_model("whisper-base")
    with pytest.raises(KoemoError, match=r"^whisper-base-encoder: runtime must be torch or onnx, not 'tensorrt'$"):
        WhisperBaseEncoder(layer="all", runtime="tensorrt")
    assert WhisperBaseEncoder(layer=None, runtime="onnx").runtime == "torch"  # CTranslate2 runs the last layer
    onnx, torch = WhisperBaseEncoder(layer="all", runtime="onnx"), WhisperBaseEncoder(layer="all")
    assert onnx.runtime == "onnx" and onnx.id == torch.id  # same features, same store entries


@pytest.mark.parametrize("name, runtime, options", [
    ("whisper-base-encoder", "onnx", {"runtime": "onnx"}),
    ("whisper-base-encoder", "onnx-int8", {"runtime": "onnx"}),  # int8 is the head's only
    ("whisper-base-encoder", "torch", {}),
    ("mfcc", "onnx", {}),
    ("hf-speech:/models/wav2vec2", "onnx", {}),
])
def test_predict_runtime_reaches_encoders_that_have_one(name, runtime, options):
    from koemo.serving.loader import _speech_runtime

    assert _speech_runtime(name, runtime) == options


@pytest.mark.slow
def test_real_encoder_features_equal_pytorch_within_float16(require_model, emotiontts_utts):
    from koemo.data.audio import load_audio
    from koemo.encoders.whisper import WhisperBaseEncoder

    require_model("whisper-base")
    audio = load_audio(next(u for u in emotiontts_utts if u.id == "nea00004").audio)
    onnx = WhisperBaseEncoder(layer="all", runtime="onnx").encode(audio)
    ref = WhisperBaseEncoder(layer="all").encode(audio)
    assert onnx.shape == ref.shape == (ref.shape[0], 7, 512)
    assert np.abs(onnx - ref).max() <= wo.REL_TOLERANCE * np.abs(ref).max()
    assert np.mean(onnx.astype(np.float16) == ref.astype(np.float16)) > 0.98  # what the store keeps


@pytest.mark.parametrize("error, message", [
    (RuntimeError("data-dependent branch\nmore detail"),
     "the Whisper encoder cannot be exported to ONNX (data-dependent branch)"),
    (ImportError("no module", name="onnxscript"),
     "--runtime onnx needs onnx, onnxscript and onnxruntime (onnxscript missing); install them with: "
     "pip install 'koemo[export]'"),
])
def test_an_export_that_fails_says_why_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, error, message):
    import torch

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(KoemoError) as e:
        wo.export(tiny_encoder(layers=1), tmp_path / "enc.onnx", stacked=False)
    assert str(e.value) == message
    assert list(tmp_path.iterdir()) == []
