"""Text encoders: shapes, empty text, truncation, Korean tokenisation, fine-tuning modules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from koemo.encoders import get_text_encoder
from koemo.errors import KoemoError
from tests.encoders.conftest import KOREAN


def test_hf_text_tiny_bert(tiny_bert_dir, caplog):
    enc = get_text_encoder(f"hf-text:{tiny_bert_dir}")
    out = enc.encode(KOREAN + ["", "   "])
    tok = enc.tokenizer
    for text, arr in zip(KOREAN, out):
        assert arr.shape == (len(tok(text)["input_ids"]), 32)
        assert arr.dtype == np.float32
    assert enc.unknown_token_rate(KOREAN) == 0.0
    for arr in out[3:]:  # empty and whitespace: one zero vector
        assert arr.shape == (1, 32) and not arr.any()
    # batched (padded) and one-by-one agree
    single = enc.encode([KOREAN[0]])[0]
    assert np.allclose(single, out[0], atol=1e-5)
    # longer than the 64-token limit: truncated, counted, warned
    long = "정말 " * 40
    with caplog.at_level("WARNING"):
        arr = enc.encode([long])[0]
    assert arr.shape == (64, 32) and enc.truncated == 1
    assert "truncated" in caplog.text


def test_hf_text_torch_module(tiny_bert_dir):
    import torch

    module = get_text_encoder(f"hf-text:{tiny_bert_dir}", layer=1).torch_module()
    h, mask = module([KOREAN[0], ""])
    assert h.shape[0] == 2 and h.shape[2] == 32
    assert mask[1].tolist()[:1] == [True] and not mask[1, 1:].any() and not h[1].any()
    h.sum().backward()
    assert any(p.grad is not None for p in module.parameters())
    assert isinstance(module, torch.nn.Module)


def test_embeddinggemma_korean(require_model, emotiontts_utts):
    require_model("embeddinggemma-300m")
    enc = get_text_encoder("embeddinggemma-300m")
    sentences = sorted({u.text for u in emotiontts_utts})
    assert enc.unknown_token_rate(sentences) == 0.0  # no Hangul falls to <unk>
    out = enc.encode([sentences[0], " "])
    assert out[0].shape == (len(enc.tokenizer(sentences[0])["input_ids"]), 768)
    assert out[1].shape == (1, 768) and not out[1].any()
    assert enc.max_tokens == 2048 and "weights=" in enc.id


def test_e5_small_sentence_vectors(require_model):
    require_model("e5-small")
    enc = get_text_encoder("e5-small")
    out = enc.encode(KOREAN[:2] + [""])
    assert [a.shape for a in out] == [(1, 384)] * 3
    assert abs(np.linalg.norm(out[0]) - 1) < 1e-4
    assert not out[2].any()
    assert enc.sentence_vector and not enc.finetunable


def test_fasttext_train_and_encode(tmp_path):
    from koemo.encoders.fasttext import fasttext_dir, morphemes, train_fasttext
    from koemo.paths import data_dir

    with pytest.raises(KoemoError, match="koemo encoders train-fasttext"):
        get_text_encoder("fasttext-ko")
    from koemo.data.text_corpora import load_text_corpora
    from koemo.errors import SkipLog

    corpus = data_dir() / "korean_emotion_text"
    held_out = load_text_corpora(corpus, SkipLog())[0].text  # a sentence of the corpus itself
    out = train_fasttext(corpus, exclude_texts={held_out, KOREAN[0]}, vector_size=16, epochs=1, max_sentences=400)
    assert out == fasttext_dir()
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["excluded_sentences"] >= 1 and meta["sentences"] <= 400
    enc = get_text_encoder("fasttext-ko")
    assert enc.dim == 16 and "dim=16" in enc.id
    arrays = enc.encode([KOREAN[1], ""])
    assert arrays[0].shape == (len(morphemes(KOREAN[1])), 16)
    assert arrays[1].shape == (1, 16) and not arrays[1].any()
    assert np.isfinite(arrays[0]).all()


def test_e5_engine_build_needs_a_compiler(tmp_path, monkeypatch):
    from koemo.models.engines import compile_engine

    (tmp_path / "e5.c").write_text("int e5_dim(void *m) { return 384; }\n")
    assert compile_engine(tmp_path).is_file()  # the system C compiler builds a shared library
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(KoemoError, match="compiling e5.c failed"):
        compile_engine(tmp_path)
