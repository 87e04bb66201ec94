"""Speech encoders: documented shapes on real audio, CT2 vs PyTorch Whisper, tiny hub-class models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from koemo.data.audio import load_audio
from koemo.encoders import get_speech_encoder
from koemo.errors import BadInputError, KoemoError
from tests.conftest import tone


@pytest.fixture(scope="module")
def clip(emotiontts_utts):
    u = emotiontts_utts[0]
    return load_audio(u.audio)[: 16000 * 2]  # 2 s of real speech


def test_mfcc_shape_and_short_audio(clip):
    enc = get_speech_encoder("mfcc")
    out = enc.encode(clip)
    assert out.shape == (1 + len(clip) // 160, 120)
    assert enc.frame_rate == 100 and not enc.finetunable
    assert enc.encode(np.zeros(5, np.float32)).shape == (1 + 400 // 160, 120)  # padded to one window
    assert np.isfinite(enc.encode(np.zeros(16000, np.float32))).all()  # digital silence: no -inf
    assert "n_mfcc=40" in enc.id


def test_nan_audio_is_a_one_line_error():
    enc = get_speech_encoder("mfcc")
    bad = tone(0.5)
    bad[10] = np.nan
    with pytest.raises(BadInputError, match="utt1: audio contains NaN"):
        enc.encode(bad, where="utt1")


def test_ct2_and_torch_whisper_agree(require_model, clip):
    require_model("whisper-base")
    ct2 = get_speech_encoder("whisper-base-encoder")
    pt = get_speech_encoder("whisper-base-encoder", backend="torch")
    a, b = ct2.encode(clip), pt.encode(clip)
    assert a.shape == b.shape == (math.ceil(len(clip) / 320), 512)
    diff = float(np.abs(a - b).max())
    print(f"\nCT2 vs PyTorch whisper-base encoder, {len(clip) / 16000:.1f} s clip: max abs diff {diff:.2e}"
          f" (outputs up to {np.abs(a).max():.1f})")
    assert diff < 2e-3
    assert ct2.id != pt.id and "model=" in ct2.id and "layer=last" in ct2.id
    assert ct2.encode(clip[:10]).shape == (1, 512)  # shorter than one frame


def test_whisper_layer_choice_and_windows(require_model):
    require_model("whisper-base")
    from koemo.encoders.whisper import log_mel_windows

    enc = get_speech_encoder("whisper-base-encoder", layer=1)
    assert enc.backend == "torch" and "layer=1" in enc.id
    out = enc.encode(tone(0.5))
    assert out.shape == (25, 512)
    mels, keep = log_mel_windows(np.zeros(31 * 16000, np.float32))  # > 30 s: two windows
    assert [m.shape for m in mels] == [(80, 3000)] * 2 and keep == [1500, 50]
    with pytest.raises(KoemoError, match="last layer only"):
        type(enc)(layer=2, backend="ct2")


def test_whisper_clip_window_encodes_the_clip_and_one_second_after(require_model):
    """``window="clip"``: the same frames kept, from an encoder that saw the clip plus 1 s."""
    require_model("whisper-base")
    from koemo.encoders.whisper import log_mel_windows

    audio = tone(31.0)
    mels, keep = log_mel_windows(audio, window="clip")
    assert [m.shape for m in mels] == [(80, 3000), (80, 200)] and keep == [1500, 50]  # 1 s + 1 s margin
    whole, _ = log_mel_windows(audio)
    np.testing.assert_array_equal(mels[1], whole[1][:, :200])  # the same log-mel, cut
    assert log_mel_windows(tone(29.5), window="clip")[0][0].shape == (80, 3000)  # never past 30 s

    full = get_speech_encoder("whisper-base-encoder", layer="all")
    clip = get_speech_encoder("whisper-base-encoder", layer="all", window="clip")
    assert "mel=30s-window" in full.id and "mel=clip+1s" in clip.id and clip.id.replace("clip+1s", "30s-window") == full.id
    a, b = full.encode(tone(2.0)), clip.encode(tone(2.0))
    assert a.shape == b.shape == (100, 7, 512) and not np.allclose(a, b, atol=1e-2)
    frames, final = clip.encode_windows(tone(2.0))
    assert [f.shape for f in final] == [(150, 512)]  # what the decoder reads: the clip + 1 s
    np.testing.assert_allclose(frames[:, -1], final[0][:100], atol=1e-5)
    for bad, match in [(dict(window="5s"), "window must be one of 30s, clip, 30s-merged, not '5s'"),
                       (dict(window="clip", backend="ct2"), "CTranslate2 backend encodes whole 30 s windows")]:
        with pytest.raises(KoemoError, match=match):
            type(clip)(**bad)
    with pytest.raises(KoemoError, match="fine-tuning encodes whole 30 s windows"):
        type(clip)(layer=2, window="clip").torch_module()


def test_whisper_merged_window_keeps_the_clip_apart_and_merges_the_padding(require_model, clip):
    """``window="30s-merged"``: the whole window, its padding after the clip + 1 s merged; the
    kept frames near the whole pass's, 1500 frames for the decoder, whole windows unchanged."""
    require_model("whisper-base")
    from koemo.encoders.whisper import kept_apart, log_mel_windows

    assert kept_apart(2 * 16000) == 150 and kept_apart(30 * 16000) == 1500
    assert [m.shape for m in log_mel_windows(tone(2.0), window="30s-merged")[0]] == [(80, 3000)]
    full = get_speech_encoder("whisper-base-encoder", layer="all")
    merged = get_speech_encoder("whisper-base-encoder", layer="all", window="30s-merged")
    assert "mel=30s-window-merged8+1s" in merged.id and merged.id.replace("30s-window-merged8+1s", "30s-window") == full.id
    audio = np.concatenate([tone(29.0), clip])  # 31 s: a whole window, then 1 s of speech
    a, b = full.encode(audio), merged.encode(audio)
    assert a.shape == b.shape == (1550, 7, 512)
    np.testing.assert_allclose(b[:1500], a[:1500], atol=1e-4 * np.abs(a).max())  # a whole window: nothing merged
    def moved(x):  # per layer: mean |x - whole pass| / mean |whole pass|, on the speech's frames
        return np.abs(x[1500:] - a[1500:]).mean(axis=(0, 2)) / np.abs(a[1500:]).mean(axis=(0, 2))

    rel, cut = moved(b), moved(get_speech_encoder("whisper-base-encoder", layer="all", window="clip").encode(audio))
    # the front end sees no other frame; each block moves less than half as far as without the padding
    assert rel[0] == 0 and (rel[1:] > 0).all() and (rel[1:] < cut[1:] / 2).all(), (rel, cut)
    frames, final = merged.encode_windows(tone(2.0))
    assert [f.shape for f in final] == [(1500, 512)]  # the decoder reads a whole window
    np.testing.assert_allclose(frames[:, -1], final[0][:100], atol=1e-5)
    assert type(merged)(layer="all", window="30s-merged", runtime="onnx").runtime == "torch"  # its graph follows the clip
    with pytest.raises(KoemoError, match="CTranslate2 backend encodes whole 30 s windows"):
        type(merged)(window="30s-merged", backend="ct2")


def test_speech_settings_are_read_from_a_recipe_or_a_bundle_alike():
    from koemo.config import EncoderConfig
    from koemo.encoders.base import speech_settings

    section = EncoderConfig(speech_layer="all", speech_window="clip")
    assert speech_settings(section) == {"layer": "all", "window": "clip"}
    assert speech_settings({"speech": "whisper-base-encoder", "speech_layer": "all", "speech_window": "clip"}) == \
        speech_settings(section)
    assert speech_settings({"speech_layer": 3}) == {"layer": 3}  # a bundle from before windows: 30 s
    assert speech_settings(EncoderConfig(speech_layer="all")) == {"layer": "all"}  # encoders without windows work
    assert speech_settings(section, "mfcc") == {"layer": None}  # another encoder than the recipe's: its defaults


def test_ct2_model_bin_reader(require_model):
    from koemo.encoders.ct2bin import read_ct2_variables

    v, info = read_ct2_variables(require_model("whisper-base") / "model.bin", prefix="encoder/")
    assert info["spec"] == "WhisperSpec"
    assert v["encoder/layer_0/self_attention/linear_0/weight"].shape == (1536, 512)  # fused q/k/v
    assert info["dtypes"]["encoder/conv1/weight"] == "float16"
    assert not any(k.startswith("decoder/") for k in v)


def test_whisper_torch_module_trains(require_model):
    import torch

    require_model("whisper-base")
    module = get_speech_encoder("whisper-base-encoder", layer=1).torch_module()
    waves = torch.from_numpy(np.stack([tone(1.0), np.pad(tone(0.4), (0, 9600))]))
    frames, lengths = module(waves, torch.tensor([16000, 6400]))
    assert frames.shape == (2, 50, 512) and lengths.tolist() == [50, 20]
    frames[0].sum().backward()
    assert module.encoder.conv1.weight.grad is not None


def test_hf_speech_tiny_models(tiny_speech_dir):
    import torch

    enc = get_speech_encoder(f"hf-speech:{tiny_speech_dir}")
    assert enc.dim == 32 and enc.frame_rate == 50 and enc.finetunable
    out = enc.encode(tone(1.0))
    assert out.shape == (49, 32)  # 16000 samples through the conv stack
    assert enc.encode(np.zeros(50, np.float32) + 0.01).shape[0] >= 1  # shorter than the receptive field
    first = get_speech_encoder(f"hf-speech:{tiny_speech_dir}", layer=0)
    assert "layer=0" in first.id and not np.allclose(first.encode(tone(1.0)), out)
    module = enc.torch_module()
    frames, lengths = module(torch.from_numpy(np.stack([tone(1.0), tone(1.0)])), torch.tensor([16000, 8000]))
    assert frames.shape == (2, 49, 32) and lengths.tolist() == [49, 24]
    frames.sum().backward()


def test_hf_hub_name_is_never_downloaded(monkeypatch, tmp_path):
    monkeypatch.delenv("KOEMO_HF_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(KoemoError, match="KOEMO_HF_DOWNLOAD=1"):
        get_speech_encoder("hf-speech:facebook/wav2vec2-base")


def test_a_setting_the_encoder_lacks_is_named_as_a_recipe_error():
    with pytest.raises(KoemoError, match=r"^speech encoder mfcc has no setting window \(its settings: n_mfcc, deltas\)$"):
        get_speech_encoder("mfcc", window="clip")
