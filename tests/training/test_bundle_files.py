"""The bundle's files as a reader sees them: human-readable metadata and config, the arrays and
resume state that round-trip, predictions with their seed, swaps recovered from every leftover,
and the messages of bundles that cannot load. Written for the surviving mutants of
``koemo/training/bundle.py`` (docs/testing.md)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from koemo.errors import KoemoError
from koemo.metrics import Prediction
from koemo.training.bundle import (FORMAT, Bundle, build_model, load_bundle, read_meta, read_predictions,
                                   read_resume_state, recover, update_meta, write_bundle)


def test_metadata_and_config_are_written_for_people_to_read(tmp_path):
    """Korean labels stay Korean (not \\uXXXX), one key a line with a one-space indent, and the
    config keeps the recipe's order of sections."""
    out = write_bundle(tmp_path / "b", {"labels": ["기쁨", "슬픔"]}, {"name": "레시피", "data": {"a": 1}, "asr": {}},
                       {"w": torch.ones(1)})
    text = (out / "bundle.json").read_text(encoding="utf-8")
    assert '"기쁨"' in text and "\\u" not in text
    assert text.splitlines()[1] == ' "format": "koemo-bundle/2",'
    config = (out / "config.yaml").read_text(encoding="utf-8")
    assert "레시피" in config and [line.split(":")[0] for line in config.splitlines() if not line.startswith(" ")] \
        == ["name", "data", "asr"]
    update_meta(out, {**read_meta(out), "card": "감정"})
    text = (out / "bundle.json").read_text(encoding="utf-8")
    assert '"감정"' in text and text.splitlines()[1].startswith(' "') and not text.splitlines()[1].startswith('  ')


def test_input_arrays_and_resume_state_round_trip(tmp_path):
    mean = np.arange(6, dtype=np.float32).reshape(2, 3)
    resume = {"epoch": 3, "rng": np.random.default_rng(0).bit_generator.state, "array": np.ones(2)}
    out = write_bundle(tmp_path / "b", {}, {}, {"w": torch.ones(1)}, resume_state=resume,
                       inputs={"audio_mean": mean, "audio_std": mean + 1})
    arrays = Bundle(out, {}, {}, torch.nn.Linear(1, 1)).input_arrays()
    assert sorted(arrays) == ["audio_mean", "audio_std"]
    np.testing.assert_array_equal(arrays["audio_mean"], mean)
    np.testing.assert_array_equal(arrays["audio_std"], mean + 1)
    state = read_resume_state(out)  # numpy objects inside: a full (not weights-only) load
    assert state["epoch"] == 3 and state["rng"] == resume["rng"] and state["array"].tolist() == [1.0, 1.0]
    plain = write_bundle(tmp_path / "c", {}, {}, {"w": torch.ones(1)})
    assert read_resume_state(plain) is None and not (plain / "inputs.safetensors").exists()


def test_predictions_carry_the_seed_of_the_bundles_split(tmp_path):
    preds = {"asr:whisper-base": [Prediction("u1", "sad", "angry", seed=9)]}
    seeded = write_bundle(tmp_path / "s", {"split": {"seed": 4}}, {}, {"w": torch.ones(1)}, predictions=preds)
    got = read_predictions(seeded, "asr:whisper-base")
    assert [(p.id, p.label, p.pred, p.seed) for p in got] == [("u1", "sad", "angry", 4)]
    assert read_predictions(seeded, "gold") is None
    unseeded = write_bundle(tmp_path / "u", {}, {}, {"w": torch.ones(1)}, predictions=preds)
    assert [p.seed for p in read_predictions(unseeded, "asr:whisper-base")] == [9]


def test_recover_restores_the_last_written_leftover_and_removes_the_rest(tmp_path):
    """Leftover names are random (``mkdtemp``): the last written one is restored, not the last by name."""
    for name, x, when in (("c", 1, 1_000), ("a", 3, 3_000), ("b", 2, 2_000)):
        write_bundle(tmp_path / f"src{x}", {"x": x}, {}, {"w": torch.ones(1)})
        os.replace(tmp_path / f"src{x}", tmp_path / f".x.old-{name}")
        os.utime(tmp_path / f".x.old-{name}", (when, when))
    recover(tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # before read_meta, which recovers too
    assert read_meta(tmp_path / "x")["x"] == 3
    (tmp_path / ".x.old-z").mkdir()  # a leftover beside a finished bundle: removed, the bundle kept
    recover(tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"] and read_meta(tmp_path / "x")["x"] == 3
    recover(tmp_path / "nowhere" / "x")  # no parent: nothing to do, no error


def test_metadata_that_is_not_an_object_is_refused_by_name(tmp_path):
    out = write_bundle(tmp_path / "b", {}, {}, {"w": torch.ones(1)})
    (out / "bundle.json").write_text("[1, 2]")
    with pytest.raises(KoemoError) as e:
        read_meta(out)
    assert str(e.value) == f"{out / 'bundle.json'}: bundle metadata is not a JSON object"


def test_models_are_rebuilt_only_from_complete_descriptions(tmp_path):
    meta = {"format": FORMAT, "model": {"fusion": "linear", "hidden": 8}, "audio_dim": 6, "text_dim": 5,
            "labels": ["a", "b", "c"], "audio_layers": 1}
    model = build_model(meta, "B")
    assert model(audio=torch.zeros(2, 4, 6), audio_mask=torch.ones(2, 4, dtype=torch.bool),
                 text=torch.zeros(2, 3, 5), text_mask=torch.ones(2, 3, dtype=torch.bool)).shape == (2, 3)
    with pytest.raises(KoemoError) as e:
        build_model({**meta, "model": {"hidden": 8}}, "B")
    assert str(e.value) == "B: the bundle records no model section to rebuild the model from; retrain it"
    for missing in ("audio_dim", "text_dim", "labels"):
        with pytest.raises(KoemoError, match="^B: the bundle records no input dims or labels"):
            build_model({k: v for k, v in meta.items() if k != missing}, "B")


def test_loading_names_what_is_missing_or_unreadable(tmp_path):
    meta = {"model": {"fusion": "linear", "hidden": 8}, "audio_dim": 6, "text_dim": 5, "labels": ["a", "b", "c"]}
    good = build_model({**meta, "format": FORMAT})
    out = write_bundle(tmp_path / "b", meta, {"name": "r"}, good.state_dict())
    assert load_bundle(out).config == {"name": "r"} and not load_bundle(out).model.training
    (out / "config.yaml").write_text("a: [unclosed")
    with pytest.raises(KoemoError, match=r"config\.yaml: unreadable \("):
        load_bundle(out)
    (out / "config.yaml").write_text("")
    assert load_bundle(out).config == {}
    (out / "model.safetensors").unlink()
    with pytest.raises(KoemoError) as e:
        load_bundle(out)
    assert str(e.value) == f"{out}: no model.safetensors (an incomplete copy of a bundle?)"
    e2e = write_bundle(tmp_path / "e", {**meta, "end_to_end": True}, {}, good.state_dict())
    with pytest.raises(KoemoError, match="an end-to-end bundle; pass the encoders' module"):
        load_bundle(e2e)
    json.loads((e2e / "bundle.json").read_text())  # still valid JSON after all of the above


def test_a_leftover_removed_by_another_process_meanwhile_counts_as_oldest(tmp_path):
    from koemo.training.bundle import _written

    gone = tmp_path / ".x.old-gone"
    assert _written(gone) == (0.0, ".x.old-gone")
    (tmp_path / ".x.old-here").mkdir()
    assert _written(tmp_path / ".x.old-here")[0] > 0.0
