"""``koemo transcribe`` and ``koemo asr-eval`` from the command line."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from koemo.cli import app
from koemo.data.manifest import Utterance, write_manifest
from koemo.paths import REPO_ROOT

runner = CliRunner()


def koemo(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "koemo.cli", *args], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("command,words", [("transcribe", ["--backend", "--noise", "--snr", "--seed", "--jobs"]),
                                           ("asr-eval", ["--source", "--out"])])
def test_help(command, words):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    for word in words:
        assert word in result.output


@pytest.fixture
def scored_manifest(tmp_path):
    utts = [
        Utterance("a", "a.wav", "neutral", "가나다라", transcripts={"asr:x": "가나라", "asr:y": "가나다라"}),
        Utterance("b", "b.wav", "sad", "마", transcripts={"asr:x": "바"}),
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, utts)
    return path


def test_asr_eval_prints_and_writes_the_table(scored_manifest, tmp_path):
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    args = ["asr-eval", "--set", f"data.manifest={scored_manifest}"]
    result = runner.invoke(app, [*args, "--out", str(md)])
    assert result.exit_code == 0, result.output
    # asr:x: 2 character edits over 5; asr:y covers one clip, the other is missing.
    assert "| asr:x | 2 | 0 | 40.0 | 100.0 | 100.0 | 0 |" in result.output
    assert "| asr:y | 1 | 1 | 0.0 | 0.0 | 0.0 | 0 |" in result.output
    assert md.read_text(encoding="utf-8").splitlines()[2] == "| asr:x | 2 | 0 | 40.0 | 100.0 | 100.0 | 0 |"
    runner.invoke(app, [*args, "--source", "asr:x", "--out", str(csv)])
    lines = csv.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("source,clips,missing,cer,wer,swer,empty,char_edits,ref_chars")
    assert lines[1].startswith("asr:x,2,0,0.4000,1.0000,1.0000,0,2,5") and len(lines) == 2


def test_asr_eval_unknown_source_is_one_line(scored_manifest):
    result = koemo("asr-eval", "--set", f"data.manifest={scored_manifest}", "--source", "asr:z")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: no 'asr:z' transcripts in the manifest (have: asr:x, asr:y); make them with: koemo transcribe"
    )


def test_transcribe_noise_without_snr_is_one_line(scored_manifest):
    result = koemo("transcribe", "--set", f"data.manifest={scored_manifest}", "--noise", "babble")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: noise needs both a kind (--noise white|pink|babble) and an SNR (--snr DB)"


def test_transcribe_unknown_backend_is_one_line(scored_manifest):
    result = koemo("transcribe", "--set", f"data.manifest={scored_manifest}", "--backend", "kakao")
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown ASR backend 'kakao'; known: google, vosk-ko, whisper")
    assert "Traceback" not in result.stderr
