"""The Python API (``koemo.Recognizer``, ``koemo.train``, ``koemo.reproduce``): its logic on a
recording fake predictor (fast), the README's five lines and the docstring examples on the real
pipeline (slow)."""

from __future__ import annotations

import doctest
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import koemo
from koemo.errors import BadInputError, KoemoError
from koemo.serving.recognizer import Recognizer, Result
from tests.conftest import tone
from tests.serving.conftest import LABELS

README = Path(__file__).resolve().parents[2] / "README.md"


class FakePredictor:
    """Records what the recognizer hands the pipeline; answers from the audio's length."""

    labels = LABELS

    def __init__(self, normalises: bool = False):
        self.calls: list[tuple] = []
        self.speech_stage = type("Stage", (), {"normaliser": object() if normalises else None, "compact": False})()

    def observe(self, audio, session, *, name):
        self.calls.append(("observe", name, len(audio)))
        session.add_count = getattr(session, "add_count", 0) + 1

    def predict(self, audio, *, name, session=None, normalise=None, update_session=True):
        self.calls.append(("predict", name, len(audio), normalise, session, update_session))
        self.last_audio = audio
        probs = np.array([0.1, 0.2, 0.3, 0.4]) if len(audio) > 16000 else np.array([0.7, 0.1, 0.1, 0.1])
        d = {lab: float(p) for lab, p in zip(LABELS, probs)}
        seg = {"start": 0.0, "end": len(audio) / 16000, "transcript": "안녕", "label": LABELS[int(probs.argmax())],
               "probabilities": d, "contribution": {"audio": 0.75, "text": 0.25}}
        return {"transcript": "안녕", "probabilities": d, "label": seg["label"], "segments": [seg],
                "contribution": {"audio": 0.75, "text": 0.25}, "duration": len(audio) / 16000,
                "timings": {"asr": 0.1, "total": 0.2},
                "warnings": ["0.00-1.00 s: 0.20 s of speech, too short to judge"] if len(audio) < 16000 else []}

    def describe(self):
        return {"labels": list(LABELS)}


def test_top_level_names_are_the_api_and_load_lazily():
    assert koemo.Recognizer is Recognizer and koemo.Result is Result
    assert {"Recognizer", "train", "reproduce"} <= set(dir(koemo))
    with pytest.raises(AttributeError, match="nonesuch"):
        koemo.nonesuch  # noqa: B018


def test_predict_array_resamples_scales_and_mixes_to_16k_mono():
    fake = FakePredictor()
    rec = Recognizer(fake)
    x = tone(2.0, sr=8000)
    r = rec.predict(x, 8000, name="mic")
    assert fake.calls[-1][1] == "mic" and fake.calls[-1][2] == 32000  # 2 s at 16 kHz
    assert isinstance(r, Result) and r.file == "mic" and r.label == "angry"
    assert r.segments[0].contribution.audio == 0.75 and r.contribution.text == 0.25
    # int16 PCM is scaled to [-1, 1]; [samples, channels] is averaged to mono
    pcm = (tone(1.5) * 32767).astype(np.int16)
    rec.predict(np.stack([pcm, pcm], axis=1), 16000)
    assert fake.last_audio.dtype == np.float32 and len(fake.last_audio) == 24000
    np.testing.assert_allclose(fake.last_audio, tone(1.5), atol=1e-4)
    rec.predict(np.stack([pcm, np.zeros_like(pcm)]), 16000)  # [channels, samples] too
    np.testing.assert_allclose(fake.last_audio, tone(1.5) / 2, atol=1e-4)


@pytest.mark.parametrize("audio, rate, problem", [
    (np.zeros(16000, np.float32), 16000, "all silence"),
    (np.array([], np.float32), 16000, "zero-length"),
    (np.full(16000, np.nan, np.float32), 16000, "NaN"),
    (np.ones((3, 3, 3), np.float32), 16000, "1-D or \\[samples, channels\\]"),
    (np.array(["a", "b"]), 16000, "must be numbers"),
    (tone(1.0), 0, "sample_rate must be a positive integer"),
    (tone(1.0), 16000.0, "sample_rate must be a positive integer"),
])
def test_predict_array_refuses_unusable_samples_naming_them(audio, rate, problem):
    with pytest.raises(BadInputError, match=f"^call-7: .*{problem}"):
        Recognizer(FakePredictor()).predict(audio, rate, name="call-7")


def test_predict_file_checks_the_file_first(tmp_path):
    fake = FakePredictor()
    rec = Recognizer(fake)
    path = tmp_path / "a.wav"
    sf.write(path, tone(1.2), 16000)
    r = rec.predict_file(path)
    assert r.file == str(path) and fake.calls[-1][2] == 19200
    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[:2000])  # header says 1.2 s, the file holds less
    with pytest.raises(BadInputError, match="cut.wav: truncated WAV"):
        rec.predict_file(cut)
    with pytest.raises(BadInputError, match="missing.wav: file not found"):
        rec.predict_file(tmp_path / "missing.wav")


def test_predict_batch_observes_every_file_before_predicting_any(tmp_path):
    paths = []
    for i, seconds in enumerate((0.8, 1.6, 0.9)):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], tone(seconds, seed=i), 16000)
    fake = FakePredictor(normalises=True)
    results = Recognizer(fake).predict_batch(paths)
    assert [r.file for r in results] == [str(p) for p in paths]
    assert [c[0] for c in fake.calls] == ["observe"] * 3 + ["predict"] * 3
    sessions = {id(c[4]) for c in fake.calls if c[0] == "predict"}
    assert len(sessions) == 1 and fake.calls[-1][4].add_count == 3  # one session holding all three
    assert all(c[5] is False for c in fake.calls if c[0] == "predict")  # not added twice
    assert [r.label for r in results] == ["neutral", "angry", "neutral"]

    fake = FakePredictor(normalises=True)
    Recognizer(fake).predict_batch(paths, normalise="file")
    assert [c[0] for c in fake.calls] == ["predict"] * 3 and all(c[4] is None for c in fake.calls)


def test_predict_batch_by_folder_gives_each_directory_its_own_session(tmp_path):
    paths = []
    for i, folder in enumerate(("spk-a", "spk-b", "spk-a", "spk-b", "spk-b")):
        (tmp_path / folder).mkdir(exist_ok=True)
        paths.append(tmp_path / folder / f"{i}.wav")
        sf.write(paths[-1], tone(1.2, seed=i), 16000)
    fake = FakePredictor(normalises=True)
    Recognizer(fake).predict_batch(paths, normalise="folder")
    predicted = [c for c in fake.calls if c[0] == "predict"]
    assert [c[0] for c in fake.calls] == ["observe"] * 5 + ["predict"] * 5
    by_folder = {Path(c[1]).parent.name: c[4] for c in predicted}
    assert by_folder["spk-a"] is not by_folder["spk-b"]
    assert all(c[4] is by_folder[Path(c[1]).parent.name] for c in predicted)  # each file its folder's
    assert (by_folder["spk-a"].add_count, by_folder["spk-b"].add_count) == (2, 3)
    assert {c[3] for c in predicted} == {"speaker"} and all(c[5] is False for c in predicted)
    with pytest.raises(KoemoError, match="use one of speaker, file, none, folder"):
        Recognizer(fake).predict_batch(paths, normalise="room")


def test_predict_batch_skips_or_raises_on_a_bad_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(1.0), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    rec = Recognizer(FakePredictor(normalises=True))
    with pytest.raises(BadInputError, match="bad.wav: not readable as audio"):
        rec.predict_batch([good, bad])
    assert [r.file for r in rec.predict_batch([bad, good], errors="skip")] == [str(good)]
    pairs = list(rec.iter_batch([bad, good], errors="skip"))
    assert isinstance(pairs[0][1], BadInputError) and isinstance(pairs[1][1], Result)
    with pytest.raises(KoemoError, match="errors='ignore'"):
        rec.predict_batch([good], errors="ignore")
    with pytest.raises(KoemoError, match="normalise='loud'"):
        rec.predict_batch([good], normalise="loud")


def test_result_round_trips_to_the_service_json():
    body = FakePredictor().predict(tone(2.0), name="x")
    r = Result.from_dict("x", body)
    d = r.to_dict()
    assert d == {"file": "x", **body}
    assert Result.from_dict("x", {**body, "contribution": None}).contribution is None
    short = Result.from_dict("x", FakePredictor().predict(tone(0.5), name="x"))
    assert short.warnings == ("0.00-1.00 s: 0.20 s of speech, too short to judge",)
    assert short.to_dict()["warnings"] == list(short.warnings)
    body.pop("warnings")  # an answer from before the field: none
    assert Result.from_dict("x", body).warnings == ()


def test_from_pretrained_names_what_it_cannot_find(tmp_path, monkeypatch):
    monkeypatch.setenv("KOEMO_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(KoemoError, match="no trained model at .*bundles/default.*make demo"):
        Recognizer.from_pretrained("default")
    with pytest.raises(KoemoError, match="no trained model at .*bundles/fast .*koemo train --final -r emotiontts-fast"):
        Recognizer.from_pretrained("fast")
    with pytest.raises(KoemoError, match="nonesuch: neither a model bundle directory nor a known model \\(default, fast\\)"):
        Recognizer.from_pretrained("nonesuch")
    with pytest.raises(KoemoError, match="model bundle not found"):
        Recognizer.from_pretrained(tmp_path / "no-bundle")


def test_api_docstrings_without_a_model():
    import koemo.api

    failures, tried = doctest.testmod(koemo.api, extraglobs={"koemo": koemo}, report=False)[:2]
    assert tried >= 1 and failures == 0


def test_train_wrapper_runs_the_command_line_configuration(monkeypatch):
    """``koemo.train`` applies the same shortcuts as ``koemo train`` and hands over to its runner."""
    import koemo.training.cli as tcli

    seen = {}
    monkeypatch.setattr(tcli, "run", lambda cfg, **kw: seen.update(cfg=cfg, **kw) or "summary")
    assert koemo.train("emotiontts", fusion="shallow", text_train="cr:vosk-ko", seed=3, epochs=2,
                       folds=[1], overrides=["train.lr=0.5"], progress=False) == "summary"
    cfg = seen["cfg"]
    assert (cfg.model.fusion, cfg.train.text, cfg.split.seed, cfg.train.seed, cfg.train.epochs, cfg.train.lr) == \
        ("shallow", "cr:vosk-ko", 3, 3, 2, 0.5)
    assert seen["folds"] == [1] and seen["progress"] is False and seen["final"] is False


def test_reproduce_wrapper_reads_the_grid_recipe(monkeypatch):
    import koemo.experiments.reproduce as rep

    seen = {}
    monkeypatch.setattr(rep, "reproduce", lambda cfg, out, data_dir, **kw: seen.update(cfg=cfg, out=out, **kw) or {"ok": 1})
    assert koemo.reproduce("emotiontts", fast=True, seeds=2, out="somewhere", gradcam=False) == {"ok": 1}
    assert seen["cfg"].eval.seeds == 2 and seen["out"] == "somewhere" and seen["gradcam"] is False
    assert seen["shard"] is None and seen["inputs_path"] is None


# ---- the real pipeline -------------------------------------------------------------------------
@pytest.mark.slow
def test_recognizer_docstring_example_runs_on_a_real_bundle(trained_bundle, clip):
    import koemo.serving.recognizer as module

    failures, tried = doctest.testmod(module, extraglobs={"koemo": koemo, "bundle": trained_bundle, "clip": clip},
                                      report=False)[:2]
    assert tried >= 4 and failures == 0


@pytest.mark.slow
def test_readme_python_api_lines_run(trained_bundle, clip, tmp_path, monkeypatch, capsys):
    """The README's five lines, verbatim, with the test's bundle as "default" and a real clip as clip.wav."""
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    assert len(block.strip().splitlines()) == 5
    cache = tmp_path / "cache"
    (cache / "bundles").mkdir(parents=True)
    (cache / "bundles" / "default").symlink_to(trained_bundle, target_is_directory=True)
    monkeypatch.setenv("KOEMO_CACHE", str(cache))
    shutil.copy(clip, tmp_path / "clip.wav")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    label = lines[0].split()[0]
    assert label in LABELS and len(lines) == 2  # one utterance: a short clip is not cut up
    start, end, seg_label = lines[1].split()[:3]
    assert 0.0 < float(start) < 1.0 and float(end) > 2 and seg_label == label  # cut to its speech


def test_a_named_model_is_found_in_the_cache_and_a_directory_of_that_name_wins(tmp_path, monkeypatch):
    from koemo.paths import named_bundle_dir
    from koemo.serving.loader import resolve_model

    monkeypatch.setenv("KOEMO_CACHE", str(tmp_path / "cache"))
    named_bundle_dir("fast").mkdir(parents=True)
    assert resolve_model("fast") == (tmp_path / "cache" / "bundles" / "fast", "fast")
    named_bundle_dir("default").mkdir()
    assert resolve_model(None) == (tmp_path / "cache" / "bundles" / "default", "default")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").mkdir()  # a bundle directory named like a model, given as a relative path
    assert resolve_model("fast") == (Path("fast"), None)
    assert resolve_model(tmp_path / "x") == (tmp_path / "x", None)


def test_the_bundles_recipe_decides_the_window_the_service_encodes(trained_bundle, tmp_path, caplog):
    """A bundle trained on clip-window features is served by a clip-window encoder (and the
    shared pass decodes its shorter output), one trained on 30 s windows by a 30 s one."""
    import yaml

    from koemo.serving.limits import Limits
    from koemo.serving.loader import load_predictor
    from koemo.training.bundle import CONFIG

    clip = tmp_path / "clip"
    shutil.copytree(trained_bundle, clip)
    config = yaml.safe_load((clip / CONFIG).read_text(encoding="utf-8"))
    config["encoders"]["speech_window"] = "clip"
    (clip / CONFIG).write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    padded = load_predictor(trained_bundle, asr="whisper-base", limits=Limits())
    short = load_predictor(clip, asr="whisper-base", limits=Limits())
    ids = [p.describe()["encoders"]["speech"]["id"] for p in (padded, short)]
    assert "mel=30s-window" in ids[0] and "mel=clip+1s" in ids[1]
    assert short.joint.__self__.encoder.window == "clip"  # one pass: the decoder reads the clip-window output
    # the bundle's recorded encoder is the 30 s one: the service says it reads other features
    assert any("trained with speech encoder" in r.getMessage() and "mel=30s-window" in r.getMessage()
               for r in caplog.records)


def test_the_trim_margin_reaches_the_predictor_from_the_library_and_the_command_line(trained_bundle, clip, monkeypatch):
    kept = Recognizer.from_pretrained(trained_bundle, trim_margin=-1)
    assert kept.predictor.segment_config.trim_margin_s is None
    result = kept.predict_file(str(clip))
    assert result.segments[0].start == 0.0  # kept whole
    assert Recognizer.from_pretrained(trained_bundle).predictor.segment_config.trim_margin_s == 0.25
    from typer.testing import CliRunner

    from koemo.cli import app
    from koemo.serving import recognizer

    seen = {}

    def fake(name, **kw):
        seen.update(kw)
        raise KoemoError("stop here")

    monkeypatch.setattr(recognizer.Recognizer, "from_pretrained", staticmethod(fake))
    CliRunner().invoke(app, ["predict", str(clip), "--trim-margin", "0.25"])
    assert seen["trim_margin"] == 0.25


def test_a_bundle_trained_on_cut_clips_is_served_with_its_margin(trained_bundle, tmp_path):
    import shutil

    import yaml

    copy = tmp_path / "cut"
    shutil.copytree(trained_bundle, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text(encoding="utf-8"))
    config.setdefault("encoders", {})["trim_margin"] = 0.1
    (copy / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    served = Recognizer.from_pretrained(copy).predictor
    assert served.segment_config.trim_margin_s == 0.1 and served.info["trim_margin"] == 0.1
    assert Recognizer.from_pretrained(copy, trim_margin=0.3).predictor.segment_config.trim_margin_s == 0.3
    assert Recognizer.from_pretrained(copy, trim_margin=-1).predictor.info["trim_margin"] is None
    # a bundle trained on clips as recorded keeps the service's default cut
    assert Recognizer.from_pretrained(trained_bundle).predictor.info["trim_margin"] == 0.25


def test_a_bundle_with_a_lone_clip_temperature_sharpens_or_flattens_corpus_normalised_clips(trained_bundle, tmp_path):
    import json
    import shutil

    copy = tmp_path / "lone"
    shutil.copytree(trained_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text(encoding="utf-8"))
    meta["calibration"] = {"temperature": 0.9, "corpus_normalised": {"temperature": 1.35}}
    (copy / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")
    served = Recognizer.from_pretrained(copy).predictor
    assert served.lone_power == pytest.approx(0.9 / 1.35) and served.info["temperature_lone_clip"] == 1.35
    assert Recognizer.from_pretrained(trained_bundle).predictor.lone_power == 1.0  # one temperature: as before


def test_predict_prints_a_files_warnings_on_stderr(tmp_path, monkeypatch):
    import soundfile as sf
    from typer.testing import CliRunner

    from koemo.cli import app

    short, long_ = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, tone(0.5), 16000)
    sf.write(long_, tone(2.0), 16000)
    monkeypatch.setattr(Recognizer, "from_pretrained", staticmethod(lambda *a, **kw: Recognizer(FakePredictor())))
    out = CliRunner().invoke(app, ["predict", str(short), str(long_), "--json"])
    assert out.exit_code == 0, out.output
    assert out.stderr.strip() == f"{short}: 0.00-1.00 s: 0.20 s of speech, too short to judge"
    import json

    assert sorted(len(json.loads(line)["warnings"]) for line in out.stdout.splitlines()) == [0, 1]


def test_a_bundle_with_a_lone_head_serves_lone_clips_with_it(trained_bundle, clip, tmp_path):
    import json
    import shutil

    copy = tmp_path / "two-heads"
    shutil.copytree(trained_bundle, copy)
    shutil.copytree(trained_bundle, copy / "lone")
    meta = json.loads((copy / "lone" / "bundle.json").read_text(encoding="utf-8"))
    meta["calibration"] = {"temperature": 1.0, "corpus_normalised": {"temperature": 2.5}}
    (copy / "lone" / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")
    served = Recognizer.from_pretrained(copy).predictor
    assert served.classify_lone is not None and served.info["lone_head"] == str(copy / "lone")
    assert served.info["temperature_lone_clip"] == 2.5
    plain = Recognizer.from_pretrained(trained_bundle).predictor
    assert plain.classify_lone is None and plain.info["lone_head"] is None
    # the same weights at temperature 2.5: the second head's distribution is the first's, flatter
    from koemo.data.audio import load_audio

    speech = served.speech_stage(served.speech_encoder(load_audio(clip)), None)
    text = served.text_encoder("시험이 코앞인데")
    first, second = served.classify(speech, text)[0], served.classify_lone(speech, text)[0]
    np.testing.assert_allclose(second, np.exp(np.log(first) / 2.5) / np.exp(np.log(first) / 2.5).sum(), rtol=1e-6)
    labels = json.loads((copy / "lone" / "bundle.json").read_text(encoding="utf-8"))
    labels["labels"] = list(reversed(labels["labels"]))
    (copy / "lone" / "bundle.json").write_text(json.dumps(labels), encoding="utf-8")
    with pytest.raises(KoemoError, match="lone-clip head predicts"):
        Recognizer.from_pretrained(copy)
    labels["labels"] = list(reversed(labels["labels"]))  # the labels back, another speech input
    from koemo.serving.loader import speech_stage_of
    from koemo.training.bundle import load_bundle

    first_view = speech_stage_of(load_bundle(copy)).view
    labels.setdefault("encoders", {}).setdefault("speech", {})["input"] = {
        "view": "frames" if first_view == "stats" else "stats"}
    (copy / "lone" / "bundle.json").write_text(json.dumps(labels), encoding="utf-8")
    with pytest.raises(KoemoError, match="lone-clip head reads another speech input than the bundle"):
        Recognizer.from_pretrained(copy)
