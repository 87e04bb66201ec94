"""Tiny random-weight transformers models saved to temp dirs (no hub, no download)."""

from __future__ import annotations

import pytest

KOREAN = ["정말 마음이 아프다", "오늘은 기분이 아주 좋아요!", "드라마 관계자분들은 모두 회의실로 들어와 주십시오."]


def _tiny_speech(kind: str, path):
    import transformers as tf

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  conv_dim=(16, 16, 16, 16, 16, 16, 16), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                  conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=2, vocab_size=12)
    cls, model = {"wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model), "hubert": (tf.HubertConfig, tf.HubertModel),
                  "wavlm": (tf.WavLMConfig, tf.WavLMModel)}[kind]
    extra = {"num_buckets": 8, "max_bucket_distance": 20} if kind == "wavlm" else {}
    import torch

    torch.manual_seed(0)
    model(cls(**common, **extra)).save_pretrained(path)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=["wav2vec2", "hubert", "wavlm"])
def tiny_speech_dir(request, tmp_path_factory):
    return _tiny_speech(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def tiny_wav2vec2_dir(tmp_path_factory):
    return _tiny_speech("wav2vec2", tmp_path_factory.mktemp("tiny-w2v"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A BERT with a syllable WordPiece vocabulary covering the test sentences (KLUE-BERT-like)."""
    import torch
    import transformers as tf

    path = tmp_path_factory.mktemp("tiny-bert")
    chars = sorted({c for s in KOREAN for c in s if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    tok = tf.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=False,
                               tokenize_chinese_chars=False, strip_accents=False)
    tok.model_max_length = 64
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    tf.BertModel(cfg).save_pretrained(path)
    return path
