"""Ray as the distributed engine (koemo/distributed.py) on a local 2-CPU cluster: actors build
their model once, a killed actor's items are retried, and ``--ray`` transcription, feature
extraction and ``koemo reproduce`` write what the local path writes (and give the same report)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from functools import partial

import numpy as np
import pytest

from koemo import distributed
from koemo.errors import KoemoError
from tests.ray_toys import build as _build, dies_once as _dies_once, square_plus as _square_plus
from tests.experiments.test_reproduce import tiny_recipe  # noqa: F401  (fixture; registers tone-asr, band-energy, char-hash)

# under pytest-xdist (make test: -n auto), every Ray test on one worker, so one local cluster
pytestmark = pytest.mark.xdist_group("ray")


def test_map_actors_builds_once_per_actor_and_matches_local(ray_cluster, tmp_path):
    log = tmp_path / "builds.txt"
    with distributed.engine():
        got = dict(distributed.map_actors(partial(_build, log), range(20), _square_plus, num_actors=2))
    assert {x: v for x, (_, v) in got.items()} == {x: 10 + x * x for x in range(20)}
    builds = log.read_text().split()
    assert len(builds) == 2 and len(set(builds)) == 2  # two actors, each built its model once ...
    assert {pid for pid, _ in got.values()} == set(map(int, builds))  # ... and did the work
    assert distributed.active() is None  # the engine is gone after the block


def test_a_killed_actor_is_restarted_and_its_item_retried(ray_cluster, tmp_path):
    log, marker = tmp_path / "builds.txt", tmp_path / "died"
    with distributed.engine():
        got = dict(distributed.map_actors(partial(_build, log), range(8), partial(_dies_once, marker), num_actors=2))
    assert marker.exists()  # one actor did die ...
    assert got == {x: 10 + x * x for x in range(8)}  # ... yet every result arrived
    assert len(log.read_text().split()) == 3  # the restarted actor built its model again


def test_map_tasks_retries_a_killed_task(ray_cluster, tmp_path):
    marker = tmp_path / "died"
    with distributed.engine():
        got = dict(distributed.map_tasks(partial(_dies_once, marker), range(5), shared=100))
    assert marker.exists() and got == {x: 100 + x * x for x in range(5)}


def test_errors_on_workers_reach_the_driver_as_one_line(ray_cluster):
    from koemo.errors import ModelNotInstalledError
    from tests.ray_toys import not_installed

    with distributed.engine():  # a model missing on a node: the koemo error itself, not retried forever
        with pytest.raises(ModelNotInstalledError) as e:
            list(distributed.map_actors(not_installed, range(3), _square_plus, num_actors=1))
        assert str(e.value) == "model 'whisper-base' is not installed; install it with: koemo models install whisper-base"
    with distributed.engine(gpus=0.5):
        with pytest.raises(KoemoError, match=r"--ray-gpus 0.5: the Ray cluster has 0 GPUs"):
            list(distributed.map_tasks(_square_plus, [1], shared=0))


def test_ray_stays_optional():
    """Importing koemo never imports Ray; a --ray path without Ray says how to install it."""
    code = ("import sys, koemo.cli, koemo.asr.transcribe, koemo.encoders.store, koemo.experiments.reproduce, "
            "koemo.distributed; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    code = ("import sys; sys.modules['ray'] = None\nfrom koemo.distributed import engine\n"
            "try:\n    engine().__enter__()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True).stdout
    assert out.strip() == "KoemoError " + distributed.INSTALL_HINT


def test_transcripts_and_features_on_ray_match_local_and_resume(ray_cluster, tiny_recipe, tmp_path, monkeypatch):  # noqa: F811
    from koemo.asr.transcribe import transcribe_utterances
    from koemo.data.prepare import load_or_prepare
    from koemo.encoders.store import FeatureStore

    from koemo.errors import SkipLog

    _, utts = load_or_prepare(tiny_recipe)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really audio")
    broken = dataclasses.replace(utts[0], id="broken", audio=str(tmp_path / "broken.wav"))
    noisy = dict(backend="tone-asr", noise="white", snr=-10.0, progress=False)
    local = transcribe_utterances(utts + [broken], **noisy)
    lstore, lskips = FeatureStore(tmp_path / "local-features"), SkipLog()
    lspeech = lstore.speech("band-energy", utts + [broken], progress=False, skips=lskips)
    ltext = lstore.text("char-hash", utts, progress=False)

    monkeypatch.setenv("KOEMO_CACHE", str(tmp_path / "ray-cache"))  # an empty cache for the Ray run
    rstore, rskips = FeatureStore(tmp_path / "ray-features"), SkipLog()
    with distributed.engine():
        first = transcribe_utterances(utts + [broken], **noisy)
        again = transcribe_utterances(utts + [broken], **noisy)
        rspeech = rstore.speech("band-energy", utts + [broken], progress=False, skips=rskips)
        assert rstore.extracted == len(utts)
        rtext = rstore.text("char-hash", utts, progress=False)
        assert rstore.extracted == len({u.text for u in utts})
        rstore.speech("band-energy", utts, progress=False)
        assert rstore.extracted == 0 and rstore.hits == len(utts)  # a re-run extracts nothing
    assert (first.computed, first.cached) == (len(utts), 0)
    assert (again.computed, again.cached) == (0, len(utts))  # the driver wrote every transcript to the cache
    assert first.texts == local.texts == again.texts
    # a clip the worker cannot read comes back as the same one-line skip as here
    for ref, got in ((local.skips, first.skips), (lskips, rskips)):
        assert [(e.where, e.problem) for e in got.skipped] == [(e.where, e.problem) for e in ref.skipped]
        assert len(got) == 1 and got.skipped[0].where.startswith("broken")
    for ref, got in ((lspeech, rspeech), (ltext, rtext)):
        assert set(got) == set(ref) == {u.id for u in utts}
        assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_reproduce_on_ray_gives_the_report_numbers_of_a_local_run(ray_cluster, tiny_recipe, tmp_path, monkeypatch,  # noqa: F811
                                                                   trained_folds):
    """``koemo reproduce --ray`` (the command, on the session's 2-CPU cluster) from an empty
    cache: the driver trains nothing itself, and results.json holds the local run's numbers."""
    from typer.testing import CliRunner

    from koemo.cli import app
    from koemo.experiments.reproduce import reproduce

    one_seed = dataclasses.replace(tiny_recipe, eval=dataclasses.replace(tiny_recipe.eval, seeds=1))
    reproduce(one_seed, tmp_path / "local", progress=False, gradcam=False)
    here = json.loads((tmp_path / "local" / "results.json").read_text(encoding="utf-8"))

    monkeypatch.setenv("KOEMO_CACHE", str(tmp_path / "ray-cache"))
    assert trained_folds  # the local run trained in this process (counted alone or stacked)
    start = len(trained_folds)
    result = CliRunner().invoke(app, ["reproduce", "-r", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "ray"),
                                      "--no-gradcam", "--seeds", "1", "--ray"])
    assert result.exit_code == 0, result.output
    assert trained_folds[start:] == []  # every fold was trained on a Ray worker; the driver only read the bundles
    there = json.loads((tmp_path / "ray" / "results.json").read_text(encoding="utf-8"))
    assert list((tmp_path / "ray-cache").rglob("bundle.json"))
    for key in ("table3", "table4", "asr", "snr", "protocols", "detail"):
        assert there[key] == here[key], key
    assert there["meta"]["training_s"] > 0
