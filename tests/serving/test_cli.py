"""``koemo predict`` as a user runs it: a subprocess on real clips, and its error messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.serving.conftest import LABELS


def koemo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "koemo.cli", *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_predict_directory_json_lines_on_real_clips(trained_bundle, serving_utts, tmp_path):
    """Two real clips and one broken file in a directory: one JSON line per good clip (label
    among the known ones, probabilities summing to 1), one line naming the broken file."""
    folder = tmp_path / "calls"
    folder.mkdir()
    clips = sorted(serving_utts, key=lambda u: u.duration)[:2]
    for u in clips:
        shutil.copy(u.audio, folder / f"{u.id}.wav")
    (folder / "broken.wav").write_bytes(b"RIFF not really")
    r = koemo("predict", str(folder), "--model", str(trained_bundle), "--asr", "whisper-base", "--json")
    assert r.returncode == 1, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [os.path.basename(row["file"]) for row in rows] == sorted(f"{u.id}.wav" for u in clips)
    for row in rows:
        assert row["label"] in LABELS
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert row["transcript"]
        assert 0.0 < row["segments"][0]["start"] < 1.0  # cut to the speech (trimmed_span)
    assert f"{folder / 'broken.wav'}: not readable as audio" in r.stderr
    assert "2 files kept, 1 skipped" in r.stderr
    assert "Traceback" not in r.stderr


def test_predict_without_a_bundle_says_how_to_make_one(tmp_path, write_wav):
    wav = write_wav("a.wav")
    r = koemo("predict", str(wav), env={"KOEMO_CACHE": str(tmp_path / "empty-cache")})
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"error: no trained model at {tmp_path / 'empty-cache' / 'bundles' / 'default'} (the 'default' model); "
        "train it with: make demo, or pass --model BUNDLE_DIR"
    )
    # a named model says how to train it, where it will live
    r = koemo("predict", str(wav), "--model", "fast", env={"KOEMO_CACHE": str(tmp_path / "empty-cache")})
    fast = tmp_path / "empty-cache" / "bundles" / "fast"
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: no trained model at {fast} (the 'fast' model); train it with: koemo reproduce -r emotiontts-fast "
        f"--only 'linear.*cr_asr' && koemo train --final -r emotiontts-fast --cv-seeds 5 --out {fast}")


def test_predict_missing_file_and_bad_bundle(tmp_path):
    r = koemo("predict", str(tmp_path / "nope.wav"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope.wav'}: file or directory not found"
    (tmp_path / "a.wav").write_bytes(b"x")
    r = koemo("predict", str(tmp_path / "a.wav"), "--model", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {tmp_path}: not a koemo model bundle (no bundle.json) and no bundles inside; "
                                "train one with: koemo train")
    (tmp_path / "empty").mkdir()
    r = koemo("predict", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no audio files" in r.stderr


def test_serve_help_lists_options():
    r = koemo("serve", "--help")
    assert r.returncode == 0
    for opt in ("--host", "--port", "--model", "--max-upload-mb", "--max-duration", "--workers"):
        assert opt in r.stdout


def test_run_directory_resolves_to_its_best_fold(trained_bundle, tmp_path):
    """``--model`` may name a ``koemo train --out`` run: the fold with the best validation F1."""
    from koemo.errors import KoemoError
    from koemo.training.bundle import resolve_bundle

    run = tmp_path / "run"
    for name, f1 in (("fold-a", 0.4), ("fold-b", 0.7), ("fold-c", 0.7)):
        shutil.copytree(trained_bundle, run / name)
        meta = json.loads((run / name / "bundle.json").read_text())
        meta["metrics"]["valid"]["weighted_f1"] = f1
        (run / name / "bundle.json").write_text(json.dumps(meta))
    assert resolve_bundle(run) == run / "fold-b"
    assert resolve_bundle(run / "fold-a") == run / "fold-a"
    (tmp_path / "nothing").mkdir()
    with pytest.raises(KoemoError, match="no bundles inside"):
        resolve_bundle(tmp_path / "nothing")


@pytest.mark.slow
def test_koemo_serve_starts_and_answers(trained_bundle):
    """``koemo serve`` as a process: health, model description, a clear error for junk."""
    import httpx

    from tests.serving.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "koemo.cli", "serve", "--port", str(port), "--model", str(trained_bundle),
         "--asr", "whisper-base", "--max-duration", "60", "--deployment-session"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            import time

            time.sleep(0.25)
        model = httpx.get(f"{url}/v1/model").json()
        assert model["labels"] == list(LABELS) and model["limits"]["max_duration_s"] == 60
        assert model["bundle"] == str(trained_bundle)
        assert model["deployment_session"] == {"on": True, "utterances": 0}
        r = httpx.post(f"{url}/v1/predict", content=b"junk", headers={"content-type": "audio/wav"})
        assert r.status_code == 415 and r.json()["file"] == "<uploaded audio>"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
