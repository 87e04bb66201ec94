"""Atomic bundle directories: a failed write leaves the old bundle; an interrupted swap recovers."""

from __future__ import annotations

import os

import pytest
import torch

from koemo.errors import KoemoError
from koemo.training.bundle import atomic_dir, read_meta, write_bundle


def test_failed_write_keeps_the_previous_bundle(tmp_path):
    out = tmp_path / "b"
    write_bundle(out, {"x": 1}, {"c": 1}, {"w": torch.ones(2)})
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "bundle.json").write_text("{}")
            raise RuntimeError("killed mid-write")
    assert read_meta(out)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_interrupted_swap_is_recovered(tmp_path):
    out = tmp_path / "b"
    write_bundle(out, {"x": 2}, {}, {"w": torch.ones(2)})
    os.replace(out, tmp_path / ".b.old-abc")  # killed between the two renames
    assert read_meta(out)["x"] == 2


def test_not_a_bundle(tmp_path):
    with pytest.raises(KoemoError, match="not a koemo model bundle"):
        read_meta(tmp_path)


def _trained_bundle(tmp_path):
    from koemo.training.trainer import predict_proba, train_fold
    from tests.training.synth import feature_data, make_recipe

    data, fold = feature_data()
    res = train_fold(make_recipe(epochs=2), fold, data, out_dir=tmp_path / "b", progress=False)
    return tmp_path / "b", predict_proba(res.model, data, fold.test, "gold"), data, fold


def test_a_version_1_bundle_loads_as_it_was_trained(tmp_path):
    """koemo-bundle/1 had no per-fusion options; it is read by upgrading, not refused."""
    import json

    import numpy as np

    from koemo.training.bundle import load_bundle
    from koemo.training.trainer import predict_proba

    out, expected, data, fold = _trained_bundle(tmp_path)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["format"] == "koemo-bundle/2" and meta["model"]["options"] == {}
    meta["format"] = "koemo-bundle/1"
    meta["model"] = {k: meta["model"][k] for k in ("fusion", "hidden", "heads", "layers", "dropout")}
    (out / "bundle.json").write_text(json.dumps(meta))
    b = load_bundle(out)
    assert b.meta["format"] == "koemo-bundle/2" and b.meta["model"]["audio_pool"] == 1
    np.testing.assert_allclose(predict_proba(b.model, data, fold.test, "gold"), expected, atol=1e-6)


def test_bundles_that_cannot_load_are_refused_with_the_reason(tmp_path):
    import json

    from koemo.training.bundle import load_bundle

    out, *_ = _trained_bundle(tmp_path)
    meta = json.loads((out / "bundle.json").read_text())
    for fmt in ("koemo-bundle/3", None):
        (out / "bundle.json").write_text(json.dumps({**meta, "format": fmt}))
        with pytest.raises(KoemoError) as e:
            load_bundle(out)
        assert str(e.value) == f"{out}: bundle format {fmt!r}, this koemo reads koemo-bundle/1, koemo-bundle/2"
    old = {**meta, "format": "koemo-bundle/1"}
    del old["audio_dim"]
    (out / "bundle.json").write_text(json.dumps(old))
    with pytest.raises(KoemoError, match="records no input dims or labels to rebuild the model from"):
        load_bundle(out)
    (out / "bundle.json").write_text("{not json")
    with pytest.raises(KoemoError, match="unreadable bundle metadata"):
        load_bundle(out)
    (out / "bundle.json").write_text(json.dumps({**meta, "model": {**meta["model"], "options": {"nope": 1}}}))
    with pytest.raises(KoemoError, match="model.options.nope: fusion model 'shallow' takes no options"):
        load_bundle(out)


def _run_dir(tmp_path, folds: dict):
    """A training run directory: one bundle per fold with the given validation F1 (None: none
    recorded), ``complete`` unless the F1 is the string "partial"."""
    from koemo.metrics import Prediction

    run = tmp_path / "run"
    for name, f1 in folds.items():
        meta = {"complete": f1 != "partial", "metrics": {"valid": {} if f1 in (None, "partial") else {"weighted_f1": f1}}}
        write_bundle(run / name, meta, {}, {"w": torch.ones(1)},
                     predictions={"asr:whisper-base": [Prediction("u1", "sad", "sad")]})
    (run / ".tmp-x").mkdir()
    (run / ".tmp-x" / "bundle.json").write_text("{}")  # a half-written temporary: never a candidate
    return run


def test_a_run_directory_resolves_to_its_best_complete_fold(tmp_path):
    from koemo.training.bundle import find_bundles, resolve_bundle, stored_sources

    run = _run_dir(tmp_path, {"f0": 0.5, "f1": 0.8, "f2": 0.8, "f3": "partial", "f4": None})
    assert find_bundles(run) == [run / f for f in ("f0", "f1", "f2", "f3", "f4")]
    assert find_bundles(run / "f1") == [run / "f1"]
    assert resolve_bundle(run) == run / "f1"  # the best; ties: the first by name
    assert resolve_bundle(run / "f0") == run / "f0"  # a bundle is itself
    assert stored_sources(run / "f0") == ["asr_whisper-base"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KoemoError, match="not a koemo model bundle .* and no bundles inside"):
        resolve_bundle(empty)
    with pytest.raises(KoemoError, match="none of its 2 bundles is complete"):
        resolve_bundle(_run_dir(tmp_path / "p", {"a": "partial", "b": None}))


def test_update_meta_replaces_the_metadata_and_keeps_the_format(tmp_path):
    from koemo.training.bundle import FORMAT, update_meta

    write_bundle(tmp_path / "b", {"x": 1}, {}, {"w": torch.ones(1)})
    meta = read_meta(tmp_path / "b")
    update_meta(tmp_path / "b", {**meta, "calibration": {"temperature": 1.5}, "format": "old"})
    got = read_meta(tmp_path / "b")
    assert got["calibration"] == {"temperature": 1.5} and got["x"] == 1 and got["format"] == FORMAT
