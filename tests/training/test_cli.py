"""``koemo train`` end to end on a tiny CSV dataset: mfcc + a tiny BERT through the real store."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from koemo.cli import app

KOREAN = ["오늘 정말 기분이 좋아요", "마음이 너무 아프다", "그만 좀 해 화가 난다", "회의실로 들어와 주세요"]
LABELS = ["happy", "sad", "angry", "neutral"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    import torch
    import transformers as tf

    path = tmp_path_factory.mktemp("tiny-bert")
    chars = sorted({c for s in KOREAN for c in s if not c.isspace()} | set("xyz"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    tok = tf.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=False,
                               tokenize_chinese_chars=False, strip_accents=False)
    tok.model_max_length = 32
    tok.save_pretrained(path)
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32)).save_pretrained(path)
    return path


@pytest.fixture
def dataset(tmp_path, write_wav):
    rows = []
    for s in range(4):
        for g, (text, label) in enumerate(zip(KOREAN, LABELS)):
            wav = write_wav(f"wav/s{s}g{g}.wav", seconds=0.3, freq=150.0 + 80 * g + 7 * s, seed=s)
            rows.append({"id": f"s{s}g{g}", "audio": str(wav), "text": text, "label": label,
                         "speaker": f"spk{s}", "group": f"g{g}", "asr:fake": text[:-1] + "x"})
    path = tmp_path / "data.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path, rows


def args(csv_path, bert, out, *extra):
    return ["train", "-r", "manifest", "--set", f"data.root={csv_path}", "--set", "data.label_set=emotiontts4",
            "--set", "split.protocol=speaker", "--set", "split.folds=2", "--set", "encoders.speech=mfcc",
            "--set", f"encoders.text=hf-text:{bert}", "--set", "model.hidden=8", "--set", "model.heads=2",
            "--set", "train.batch_size=4", "--out", str(out), "--quiet", *extra]


def test_koemo_train_writes_bundles_and_prints_f1(dataset, tiny_bert, tmp_path):
    csv_path, _ = dataset
    res = CliRunner().invoke(app, args(csv_path, tiny_bert, tmp_path / "run", "--fusion", "mult",
                                       "--text-train", "cr:fake", "--fold", "1", "--epochs", "2", "--seed", "3"))
    assert res.exit_code == 0, res.output
    assert "valid weighted F1" in res.output and "pooled test" in res.output
    assert "asr:fake" in res.output and "gold" in res.output
    bundles = [p for p in (tmp_path / "run").iterdir() if p.is_dir()]
    assert len(bundles) == 1 and bundles[0].name == "speaker1"
    meta = json.loads((bundles[0] / "bundle.json").read_text())
    assert meta["split"]["seed"] == 3 and meta["seed"] == 3 and meta["text_train"] == "cr:fake"
    assert meta["encoders"]["speech"]["name"] == "mfcc" and meta["encoders"]["text"]["id"]
    assert meta["cr"] == {"lam": 1.0, "ce_path": "gold", "kl": "gold||stt", "detach_target": True}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["folds"]) == {"speaker1"}


def test_koemo_train_names_the_utterance_without_asr_text(dataset, tiny_bert, tmp_path):
    csv_path, rows = dataset
    rows[5]["asr:fake"] = ""
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = CliRunner().invoke(app, args(csv_path, tiny_bert, tmp_path / "run", "--text-train", "asr:fake",
                                       "--epochs", "1"))
    assert res.exit_code != 0
    msg = str(res.exception)
    assert rows[5]["id"] in msg and "koemo transcribe --backend fake" in msg and "\n" not in msg


def test_koemo_train_with_prosody_appends_the_functionals_to_the_speech_input(dataset, tiny_bert, tmp_path):
    import numpy as np

    from koemo.encoders.prosody import FEATURES
    from koemo.training.bundle import load_bundle

    csv_path, _ = dataset
    res = CliRunner().invoke(app, args(csv_path, tiny_bert, tmp_path / "run", "--fusion", "linear", "--fold", "1",
                                       "--epochs", "1", "--set", "encoders.prosody=true", "--set", "model.standardise=true"))
    assert res.exit_code == 0, res.output
    (bundle,) = [p for p in (tmp_path / "run").iterdir() if p.is_dir()]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["encoders"]["speech"]["prosody"] is True
    model = load_bundle(bundle).model
    mean = next(v for k, v in model.state_dict().items() if k.endswith("audio_mean"))
    d = 120 + len(FEATURES)  # mfcc's 120 dims, then the functionals
    assert mean.shape[-1] == 2 * d  # the linear head reads mean and deviation over time
    assert np.abs(mean[..., 120:d].numpy()).sum() > 0  # the functionals reached the head's input
    assert np.abs(mean[..., d + 120:].numpy()).max() < 1e-6  # the same at every frame: no deviation
