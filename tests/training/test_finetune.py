"""End-to-end fine-tuning with tiny random transformers encoders built from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from koemo.fusion import build_fusion
from koemo.training.bundle import load_bundle
from koemo.training.data import FeatureData
from koemo.training.finetune import EndToEnd
from koemo.training.trainer import train_fold
from tests.training.synth import LABELS, make_fold, make_recipe

transformers = pytest.importorskip("transformers")


class TinyWhisperSpeech(nn.Module):
    """The speech-module contract (waves, lengths) -> (frames, frame_lengths) around a tiny
    WhisperEncoder; the 'mel' front end is the waveform cut into 8-sample frames."""

    def __init__(self):
        super().__init__()
        cfg = transformers.WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                                         encoder_ffn_dim=32, max_source_positions=16, decoder_layers=1,
                                         decoder_attention_heads=2, decoder_ffn_dim=32, vocab_size=32)
        self.encoder = transformers.models.whisper.modeling_whisper.WhisperEncoder(cfg)
        self.dim = 16

    def forward(self, waves, lengths):
        B = waves.shape[0]
        frames = waves[:, : 32 * 8]
        frames = torch.nn.functional.pad(frames, (0, 32 * 8 - frames.shape[1])).view(B, 32, 8).transpose(1, 2)
        hidden = self.encoder(frames).last_hidden_state  # [B, 16, 16]
        n = torch.clamp((lengths + 15) // 16, 1, hidden.shape[1])
        return hidden, n


class TinyBertText(nn.Module):
    """The text-module contract texts -> (tokens, mask) around a tiny BertModel (char ids)."""

    def __init__(self):
        super().__init__()
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=32)
        self.model = transformers.BertModel(cfg)
        self.dim = 16

    def forward(self, texts):
        ids = [[1] + [4 + ord(c) % 60 for c in t][:30] for t in texts]
        n = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [0] * (n - len(x)) for x in ids])
        mask = input_ids != 0
        return self.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state, mask


def raw_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    words = ["calm", "joy", "tears", "rage"]
    audio, gold, asr, labels = {}, {}, {}, {}
    for i in range(n):
        uid, c = f"u{i:03d}", i % 4
        length = int(rng.integers(120, 256))
        t = np.arange(length)
        audio[uid] = (np.sin(t * (0.2 + 0.4 * c)) + 0.1 * rng.normal(size=length)).astype(np.float32)
        gold[uid] = f"{words[c]} {words[c]}"
        asr[uid] = f"{words[c][:-1]}x"
        labels[uid] = LABELS[c]
    return FeatureData(audio, {"gold": gold, "asr:fake": asr}, labels, LABELS)


def test_end_to_end_fine_tunes_the_encoders(tmp_path):
    data = raw_data()
    fold = make_fold(data.labels, n_valid=4, n_test=4)
    torch.manual_seed(0)
    model = EndToEnd(TinyWhisperSpeech(), TinyBertText(), build_fusion("mult", 16, 16, 4, hidden=8, heads=2, dropout=0.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = make_recipe(fusion="mult", text="cr:fake", epochs=2, lr=1e-3)
    res = train_fold(recipe, fold, data, model=model, out_dir=tmp_path / "e2e", progress=False,
                     encoders={"speech": {"id": "tiny-whisper"}, "text": {"id": "tiny-bert"}})
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"speech", "text", "fusion"} <= changed  # gradients reached both encoders
    assert res.meta["end_to_end"] is True and set(res.test) == {"asr:fake", "gold"}
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]

    fresh = EndToEnd(TinyWhisperSpeech(), TinyBertText(), build_fusion("mult", 16, 16, 4, hidden=8, heads=2, dropout=0.0))
    b = load_bundle(tmp_path / "e2e", model=fresh)
    batch = data.batch([(u, "asr:fake") for u in fold.test])
    torch.testing.assert_close(b.model(**batch), res.model.eval()(**batch))
    with pytest.raises(Exception, match="end-to-end bundle"):
        load_bundle(tmp_path / "e2e")


def test_frozen_encoders_get_no_update():
    data = raw_data()
    fold = make_fold(data.labels, n_valid=4, n_test=4)
    torch.manual_seed(0)
    model = EndToEnd(TinyWhisperSpeech(), TinyBertText(), build_fusion("shallow", 16, 16, 4, hidden=8, heads=2),
                     freeze_speech=True)
    before = {k: v.clone() for k, v in model.speech.state_dict().items()}
    train_fold(make_recipe(fusion="shallow", epochs=1, lr=1e-3), fold, data, model=model, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.speech.state_dict().items())
