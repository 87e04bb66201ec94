"""The parts of the bundle contract a reader relies on without looking: files in UTF-8 whatever
the machine's locale, the model's input stage described and rebuilt exactly, the choice of a
run's fold (and the line that reports it), and the exact messages of bundles that cannot load.
Written for the mutants of ``koemo/training/bundle.py`` the second mutmut run left alive
(docs/testing.md); each test names what it guards."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from koemo.config import ModelConfig, to_dict
from koemo.errors import KoemoError
from koemo.fusion import build_from_config
from koemo.training.bundle import (Bundle, build_model, bundle_done, describe_model, load_bundle, predictions_file,
                                   read_meta, recover, resolve_bundle, write_bundle)

LABELS = ["기쁨", "슬픔", "분노"]


def _linear(**model) -> tuple[dict, torch.nn.Module]:
    cfg = ModelConfig(**{"fusion": "linear", "hidden": 8, "heads": 2, **model})
    fusion = build_from_config(cfg, 6, 5, 3)
    return {**describe_model(cfg, fusion), "labels": LABELS}, fusion


def test_bundle_files_are_utf8_whatever_the_locale(tmp_path, cp949_default):
    """Korean Windows' locale encoding is cp949: a bundle written or read there with the default
    encoding garbles its Korean labels and config."""
    meta, fusion = _linear()
    out = write_bundle(tmp_path / "b", meta, {"name": "감정 레시피"}, fusion.state_dict())
    assert "기쁨" in (out / "bundle.json").read_bytes().decode("utf-8")
    assert "감정 레시피" in (out / "config.yaml").read_bytes().decode("utf-8")
    loaded = load_bundle(out)
    assert loaded.labels == LABELS and loaded.config == {"name": "감정 레시피"}
    assert read_meta(out)["labels"] == LABELS


@pytest.mark.parametrize("layer_mix", ["weighted", "concat"])
def test_a_described_model_is_rebuilt_with_the_same_input_stage(layer_mix):
    """Seven Whisper layers, mixed or side by side, standardised: the bundle records one layer's
    size (not the concatenation's) and the layer count, and the rebuilt model has every weight
    and buffer of the trained one, shape for shape."""
    cfg = ModelConfig(fusion="linear", hidden=8, heads=2, standardise=True, layer_mix=layer_mix)
    fusion = build_from_config(cfg, 6, 5, 3, audio_layers=7)
    meta = {**describe_model(cfg, fusion), "labels": LABELS}
    assert (meta["model"], meta["audio_dim"], meta["text_dim"], meta["audio_layers"]) == (to_dict(cfg), 6, 5, 7)
    rebuilt = build_model(meta, "B")
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in fusion.state_dict().items()}
    rebuilt.load_state_dict(fusion.state_dict())
    one_layer = build_model({k: v for k, v in meta.items() if k != "audio_layers"}, "B")  # older bundles
    assert one_layer.audio_layers == 1 and one_layer.layer_mix is None


def test_describe_model_falls_back_for_models_without_a_configured_input_stage():
    """A module that has only ``audio_dim`` (an end-to-end head) or nothing at all still describes."""
    cfg = ModelConfig(fusion="linear")
    staged = SimpleNamespace(input_audio_dim=512, audio_dim=3584, text_dim=768, audio_layers=7)
    assert describe_model(cfg, staged) == {"model": to_dict(cfg), "audio_dim": 512, "text_dim": 768, "audio_layers": 7}
    plain = SimpleNamespace(audio_dim=64)
    assert describe_model(cfg, plain) == {"model": to_dict(cfg), "audio_dim": 64, "text_dim": None, "audio_layers": 1}
    assert describe_model(cfg, SimpleNamespace()) == {"model": to_dict(cfg), "audio_dim": None, "text_dim": None,
                                                      "audio_layers": 1}


def test_prediction_file_names_flatten_hub_names():
    assert predictions_file("asr:openai/whisper-small@babble-5") == "asr_openai_whisper-small@babble-5.jsonl"


def test_a_loaded_bundle_knows_where_it_is_and_has_no_input_arrays_unless_written(tmp_path):
    meta, fusion = _linear()
    out = write_bundle(tmp_path / "b", meta, {}, fusion.state_dict())
    loaded = load_bundle(out)
    assert loaded.path == out and loaded.input_arrays() == {}


def test_messages_of_bundles_that_cannot_be_rebuilt_are_whole_and_name_the_bundle(tmp_path):
    meta, fusion = _linear()
    with pytest.raises(KoemoError) as e:
        build_model({"labels": LABELS})
    assert str(e.value) == "bundle: the bundle records no model section to rebuild the model from; retrain it"
    with pytest.raises(KoemoError) as e:
        build_model({k: v for k, v in meta.items() if k != "text_dim"}, "B")
    assert str(e.value) == "B: the bundle records no input dims or labels to rebuild the model from; retrain it with this koemo"
    with pytest.raises(KoemoError) as e:
        build_model({**meta, "model": {"fusion": "linear", "hidden": "eight"}}, "B")
    assert str(e.value) == "B: model.hidden: expected int, got 'eight'"
    out = write_bundle(tmp_path / "b", {k: v for k, v in meta.items() if k != "model"}, {}, fusion.state_dict())
    with pytest.raises(KoemoError) as e:
        load_bundle(out)
    assert str(e.value) == f"{out}: the bundle records no model section to rebuild the model from; retrain it"
    good = write_bundle(tmp_path / "g", meta, {}, fusion.state_dict())
    broken = "name: [unclosed\nsecond: line\n"
    (good / "config.yaml").write_text(broken, encoding="utf-8")
    with pytest.raises(yaml.YAMLError) as parse:
        yaml.safe_load(broken)
    with pytest.raises(KoemoError) as e:
        load_bundle(good)
    assert str(e.value) == f"{good / 'config.yaml'}: unreadable ({str(parse.value).splitlines()[0]})"


def test_a_version_1_bundle_without_a_model_section_stays_without_one(tmp_path):
    """The upgrade fills in fields of a model section; it does not invent one (which would load
    a default fusion the bundle was never trained as)."""
    meta, fusion = _linear()
    for model in (None, {"hidden": 8}):
        out = write_bundle(tmp_path / f"v1-{model is None}", {**meta, "model": model}, {}, fusion.state_dict())
        (out / "bundle.json").write_text(json.dumps({**meta, "model": model, "format": "koemo-bundle/1"}),
                                         encoding="utf-8")
        assert read_meta(out)["model"] == model
        with pytest.raises(KoemoError) as e:
            load_bundle(out)
        assert str(e.value) == f"{out}: the bundle records no model section to rebuild the model from; retrain it"


def test_an_unreadable_bundle_is_not_done(tmp_path):
    out = write_bundle(tmp_path / "b", {"complete": True, "fingerprint": "f"}, {}, {"w": torch.ones(1)})
    assert bundle_done(out, "f") and not bundle_done(out, "g")
    (out / "bundle.json").write_text("{not json", encoding="utf-8")
    assert not bundle_done(out, "f")


def test_recover_tolerates_leftovers_another_process_removed_meanwhile(tmp_path, monkeypatch):
    """Two processes recovering the same bundle both list its leftovers; the second to remove one
    finds it gone, and must not fail."""
    write_bundle(tmp_path / "x", {"x": 1}, {}, {"w": torch.ones(1)})
    (tmp_path / ".x.old-a").mkdir()
    glob = pathlib.Path.glob

    def racing_glob(self, *args, **kwargs):
        found = list(glob(self, *args, **kwargs))
        for p in found:
            shutil.rmtree(p)  # the other process got there first
        return iter(found)

    monkeypatch.setattr(pathlib.Path, "glob", racing_glob)
    recover(tmp_path / "x")
    assert read_meta(tmp_path / "x")["x"] == 1


def _fold(run: pathlib.Path, name: str, f1: float, **meta) -> None:
    write_bundle(run / name, {"complete": True, "metrics": {"valid": {"weighted_f1": f1}}, **meta}, {},
                 {"w": torch.ones(1)})


def test_a_run_never_resolves_to_an_end_to_end_fold(tmp_path):
    """An end-to-end bundle needs its encoders' module to load; ``predict RUN`` takes the best
    frozen-feature fold even when the end-to-end one validated better."""
    _fold(tmp_path / "run", "a", 0.5)
    _fold(tmp_path / "run", "b", 0.9, end_to_end=True)
    assert resolve_bundle(tmp_path / "run") == tmp_path / "run" / "a"


def test_resolving_a_run_says_which_fold_it_took_and_why(tmp_path, caplog):
    run = tmp_path / "run"
    _fold(run, "a", 0.5)
    with caplog.at_level(logging.INFO, logger="koemo"):
        assert resolve_bundle(run) == run / "a"
    assert [r.getMessage() for r in caplog.records] == []  # one fold: nothing was chosen
    _fold(run, "b", 0.8)
    with caplog.at_level(logging.INFO, logger="koemo"):
        assert resolve_bundle(run) == run / "b"
    assert [r.getMessage() for r in caplog.records] == [f"{run}: using b (best validation weighted F1 0.800 of 2 bundles)"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KoemoError) as e:
        resolve_bundle(empty)
    assert str(e.value) == (f"{empty}: not a koemo model bundle (no bundle.json) and no bundles inside; "
                            "train one with: koemo train")


def test_a_bundle_object_reports_its_labels_in_order(tmp_path):
    assert Bundle(tmp_path, {"labels": ("b", "a")}, {}, torch.nn.Linear(1, 1)).labels == ["b", "a"]
