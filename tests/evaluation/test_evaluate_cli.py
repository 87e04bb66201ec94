"""``koemo evaluate`` on predictions files and on bundle directories with stored predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from koemo.cli import app
from koemo.evaluation.evaluate import collect, infer_labels
from koemo.training.bundle import find_bundles
from koemo.metrics import Prediction, write_predictions
from koemo.errors import KoemoError

runner = CliRunner()
LABELS = ["neutral", "happy", "sad", "angry"]


def preds_for(seed, wrong_every, n=12, fold=""):
    out = []
    for i in range(n):
        label = LABELS[i % 4]
        pred = LABELS[(i + 1) % 4] if i % wrong_every == 0 else label
        out.append(Prediction(f"u{i:02d}", label, pred, [0.25] * 4, seed, fold))
    return out


def fake_bundle(root, seed, fold_ids, source="asr:whisper-base", wrong_every=3):
    """A bundle directory as koemo.training writes it: bundle.json + predictions/<source>.jsonl."""
    root.mkdir(parents=True)
    (root / "bundle.json").write_text(json.dumps({
        "format": "koemo-bundle/1", "labels": LABELS, "complete": True, "valid_source": source,
        "split": {"protocol": "speaker-sentence", "folds": 3, "seed": seed, "fold": root.name}}))
    rows = [p for p in preds_for(0, wrong_every) if p.id in fold_ids]
    write_predictions(root / "predictions" / (source.replace(":", "_") + ".jsonl"), rows)
    return root


def test_evaluate_predictions_file(tmp_path):
    path = tmp_path / "preds.jsonl"
    write_predictions(path, preds_for(0, 3) + preds_for(1, 4))
    result = runner.invoke(app, ["evaluate", str(path), "--json", "--labels", "emotiontts4"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    # seed 0: ids 0, 3, 6, 9 wrong -> 8/12; seed 1: ids 0, 4, 8 wrong -> 9/12
    assert doc["per_seed"]["0"]["accuracy"] == pytest.approx(8 / 12)
    assert doc["per_seed"]["1"]["accuracy"] == pytest.approx(9 / 12)
    assert doc["mean"]["accuracy"] == pytest.approx((8 / 12 + 9 / 12) / 2)
    assert doc["labels"] == LABELS
    out = tmp_path / "preds.eval"
    assert json.loads((out / "metrics.json").read_text())["seeds"] == [0, 1]
    with Image.open(out / "confusion.png") as im:
        assert im.size[0] > 0 and im.size[1] > 0
    # the table view works too
    result = runner.invoke(app, ["evaluate", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0 and "weighted_f1" in result.output and "angry" in result.output


def test_evaluate_run_directory_pools_folds_per_seed(tmp_path):
    ids = [f"u{i:02d}" for i in range(12)]
    for seed in (0, 1):
        for k in range(3):
            fake_bundle(tmp_path / "run" / f"seed{seed}" / f"spk{k}", seed, set(ids[k * 4:(k + 1) * 4]),
                        wrong_every=3 if seed == 0 else 12)
    assert len(find_bundles(tmp_path / "run")) == 6
    preds, labels, origin = collect(tmp_path / "run", "asr:whisper-base")
    assert len(preds) == 24 and labels == LABELS and "6 bundle(s)" in origin
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--text", "asr:whisper-base", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    assert doc["per_seed"]["0"]["accuracy"] == pytest.approx(8 / 12)
    assert doc["per_seed"]["1"]["accuracy"] == pytest.approx(11 / 12)
    assert (tmp_path / "run" / "eval" / "asr_whisper-base" / "confusion.png").is_file()


def test_missing_source_and_bad_inputs(tmp_path):
    fake_bundle(tmp_path / "b", 0, {"u00", "u01"})
    with pytest.raises(KoemoError, match="no stored test predictions for 'gold'.*has: asr_whisper-base"):
        collect(tmp_path / "b", "gold")
    with pytest.raises(KoemoError, match="no bundles inside"):
        collect(tmp_path / "b" / "predictions", None)
    with pytest.raises(KoemoError, match="'fear' are not in the label list"):
        infer_labels([Prediction("u", "fear", "sad")], LABELS)
    assert infer_labels([Prediction("u", "sad", "happy")]) == ["happy", "sad"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "label": "sad"}\n')
    proc = subprocess.run([sys.executable, "-m", "koemo.cli", "evaluate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {bad}:1: missing field 'pred'"
