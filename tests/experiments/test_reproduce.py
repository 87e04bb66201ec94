"""``koemo reproduce`` end to end on a tiny fixture: 48 synthetic clips, a recogniser and
encoders built for the test (registered like any other part), two seeds, every section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from koemo.asr.base import ASR_BACKENDS, ASRBackend
from koemo.config import Recipe, load_config
from koemo.encoders.base import SPEECH_ENCODERS, TEXT_ENCODERS, SpeechEncoder, TextEncoder
from koemo.errors import KoemoError
from koemo.experiments.grid import Job, make_plan, parse_model
from koemo.experiments.reproduce import reproduce

LABELS = ["neutral", "happy", "sad", "angry"]
FREQS = {"neutral": 200.0, "happy": 330.0, "sad": 150.0, "angry": 500.0}
WORDS = {"neutral": "보통", "happy": "기쁘다", "sad": "슬프다", "angry": "화난다"}


if "tone-asr" not in ASR_BACKENDS:

    @ASR_BACKENDS.register("tone-asr")
    class ToneASR(ASRBackend):
        """Hears the pitch: the word of the nearest emotion tone (wrong when noise moves the peak)."""

        name = "tone-asr"

        def params(self):
            return {"version": 1}

        def _recognise(self, audio):
            spec = np.abs(np.fft.rfft(audio[:8000]))
            peak = np.argmax(spec[10:]) + 10
            freq = peak * 16000 / min(len(audio), 8000)
            label = min(FREQS, key=lambda k: abs(FREQS[k] - freq))
            return f"문장 {WORDS[label]}"


if "band-energy" not in SPEECH_ENCODERS:

    @SPEECH_ENCODERS.register("band-energy")
    class BandEnergy(SpeechEncoder):
        """Log energy in 8 frequency bands per 400-sample frame."""

        name = "band-energy"
        dim = 8
        frame_rate = 40.0
        min_samples = 400

        def __init__(self, layer=None):
            pass

        @property
        def id(self):
            return "band-energy|v1"

        def _encode(self, audio):
            n = len(audio) // 400
            frames = audio[: n * 400].reshape(n, 400)
            spec = np.abs(np.fft.rfft(frames, axis=1))[:, :64]
            return np.log1p(spec.reshape(n, 8, 8).sum(axis=2))


if "char-hash" not in TEXT_ENCODERS:

    @TEXT_ENCODERS.register("char-hash")
    class CharHash(TextEncoder):
        """One 16-dim one-hot-ish vector per character (hashed)."""

        name = "char-hash"
        dim = 16

        def __init__(self, layer=None):
            super().__init__()

        @property
        def id(self):
            return "char-hash|v1"

        def _encode(self, texts):
            out = []
            for t in texts:
                a = np.zeros((len(t), 16), dtype=np.float32)
                for i, ch in enumerate(t):
                    a[i, ord(ch) % 16] = 1.0
                out.append(a)
            return out, 0

@pytest.fixture
def tiny_recipe(tmp_path):
    """4 speakers x 12 sentences (3 per emotion): the sentence gives the emotion away, as in EmotionTTS."""
    rng = np.random.default_rng(0)
    rows = ["audio,text,label,speaker,group"]
    (tmp_path / "wav").mkdir()
    for s in range(4):
        for j in range(12):
            label = LABELS[j % 4]
            t = np.arange(8000) / 16000
            f = FREQS[label] * (1 + 0.03 * s)
            wav = 0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size)
            name = f"wav/s{s}_{j:02d}.wav"
            sf.write(tmp_path / name, wav.astype(np.float32), 16000)
            rows.append(f"{name},문장{j} {WORDS[label]},{label},spk{s},sent{j}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""
name: tiny
data: {{dataset: manifest, root: {tmp_path / 'data.csv'}, label_set: emotiontts4}}
split: {{protocol: speaker-sentence, folds: 2}}
encoders: {{speech: band-energy, text: char-hash}}
model: {{fusion: shallow, hidden: 8, heads: 2, dropout: 0.0}}
train: {{lr: 0.01, epochs: 1, batch_size: 8}}
eval:
  text: asr:tone-asr
  seeds: 2
  table3: [text-only@char-hash, audio-only@band-energy, shallow@band-energy+char-hash]
  table4_fusions: [shallow]
  asr_sources: [asr:tone-asr]
  snr_backend: tone-asr
  snr_noise: white
  snr_values: [-30]
  snr_fusion: shallow
  protocols: [stratified]
  protocol_models: [shallow@band-energy+char-hash]
""", encoding="utf-8")
    return load_config(Recipe, recipe)


def test_model_specs():
    m = parse_model("shallow", "whisper-base-encoder", "embeddinggemma-300m")
    assert m.key == "shallow@whisper-base-encoder+embeddinggemma-300m"
    assert parse_model("text-only@fasttext-ko").speech is None
    with pytest.raises(KoemoError, match="both encoders"):
        parse_model("mult@mfcc")


def test_plan_of_the_paper_recipe():
    from koemo.config import resolve_recipe

    plan = make_plan(load_config(Recipe, resolve_recipe("emotiontts-paper")))
    keys = {(j.model.key, j.train_text, j.protocol) for j in plan.jobs}
    g = "whisper-base-encoder+embeddinggemma-300m"
    for fusion in ("shallow", "fusion-transformer", "mult"):
        for s in ("asr:whisper-base", "asr:vosk-ko", "asr:whisper-base@babble-5db"):
            assert (f"{fusion}@{g}", s, "speaker-sentence") in keys
            assert (f"{fusion}@{g}", f"cr:{s}", "speaker-sentence") in keys
    assert ("text-only@fasttext-ko", "gold", "speaker-sentence") in keys
    assert ("shallow@" + g, "gold", "stratified") in keys and ("shallow@" + g, "gold", "speaker") in keys
    assert len(plan.jobs) == len(keys)  # no job twice
    # the human-trained fusions are also tested on every ASR source
    gold_job = Job(parse_model("shallow@" + g), "gold", "speaker-sentence")
    assert "asr:whisper-base@babble-0db" in plan.jobs[gold_job]


def test_reproduce_end_to_end_on_a_tiny_fixture(tiny_recipe, tmp_path, trained_folds):
    out = tmp_path / "results"
    doc = reproduce(tiny_recipe, out, progress=False, command="koemo reproduce -r tiny.yaml")
    # Table 3: three models, two seeds each, mean/std present
    assert [r["key"] for r in doc["table3"]] == ["text-only@char-hash", "audio-only@band-energy",
                                                 "shallow@band-energy+char-hash"]
    for r in doc["table3"]:
        assert 0.0 <= r["mean"]["weighted_f1"] <= 1.0 and r["std"]["weighted_f1"] >= 0.0
        assert r["mean"]["weighted_accuracy"] == pytest.approx(r["mean"]["accuracy"])
    # every clip is tested once per seed: pooled confusion sums to 48 per seed
    detail = doc["detail"]["shallow@band-energy+char-hash.gold.speaker-sentence|gold"]
    assert np.array(detail["confusion"]).sum() == 2 * 48 and detail["seeds"] == [0, 1]
    t4 = doc["table4"][0]
    assert t4["source"] == "asr:tone-asr" and {"gold", "asr_trained", "cr", "gold_on_asr"} <= set(t4)
    assert doc["asr"][0]["condition"] == "asr:tone-asr" and doc["asr"][0]["n"] == 48
    assert doc["asr"][0]["cer"] < doc["asr"][1]["cer"]  # noise at -30 dB makes the recogniser worse
    assert [p["snr"] for p in doc["snr"]] == [None, -30.0] and all("cr" in p for p in doc["snr"])
    assert {r["protocol"] for r in doc["protocols"]} == {"speaker-sentence", "stratified"}
    shares = doc["modality"]["human text"]["per_label"]
    assert set(shares) == set(LABELS)
    assert all(v["audio"] + v["text"] == pytest.approx(1.0) for v in shares.values())

    report = (out / "REPORT.md").read_text(encoding="utf-8")
    assert "## Table 3" in report and "## Table 4" in report and "## ASR quality" in report
    assert "| shallow | band-energy | char-hash |" in report
    assert "`koemo reproduce -r tiny.yaml`" in report and "Leakage, shallow@band-energy+char-hash" in report
    for fig in doc["figures"]:
        with Image.open(out / fig["path"]) as im:
            assert im.size[0] > 0 and im.size[1] > 0
    assert {Path(f["path"]).name for f in doc["figures"]} >= {"confusion.png", "snr.png"}
    assert (out / "REPORT.html").is_file()
    json.loads((out / "results.json").read_text(encoding="utf-8"))

    # koemo evaluate recomputes a bundle's predictions from the feature store when they are not
    # stored, and gets exactly what the trainer stored
    from koemo.evaluation.evaluate import predict_bundle
    from koemo.experiments.runner import fold_dir
    from koemo.training.bundle import read_predictions

    bundle = fold_dir(tiny_recipe, Job(parse_model("shallow@band-energy+char-hash"), "gold", "speaker-sentence"),
                      1, "spk0-sent1")
    stored = read_predictions(bundle, "asr:tone-asr")
    computed = predict_bundle(bundle, "asr:tone-asr", progress=False)
    assert [(p.id, p.label, p.pred) for p in computed] == [(p.id, p.label, p.pred) for p in stored]
    assert np.allclose([p.probs for p in computed], [p.probs for p in stored], atol=1e-5)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["encoders"]["speech"]["id"] == "band-energy|v1"

    # a re-run trains nothing: every fold bundle is complete and reused
    assert trained_folds  # the first run trained them (stacked or alone)
    first = len(trained_folds)
    again = reproduce(tiny_recipe, out, progress=False)
    assert len(trained_folds) == first  # every fold bundle is finished: read, not retrained ...
    assert again["table3"] == doc["table3"]  # ... and gives the same numbers

    # a bigger grid trains only what it adds: the other folds' fingerprints ignore the eval section
    import dataclasses

    bigger = dataclasses.replace(tiny_recipe, eval=dataclasses.replace(
        tiny_recipe.eval, table3=tiny_recipe.eval.table3 + ["mult@band-energy+char-hash"]))
    grown = reproduce(bigger, out, progress=False, gradcam=False)
    added = trained_folds[first:]
    assert len(added) == 2 * 2 * 2 and {f for f, *_ in added} == {"mult"}  # 2 seeds x 4 folds (2 x 2 grid)
    assert grown["table3"][:3] == doc["table3"]


def test_a_packed_grid_trains_in_shards_elsewhere_and_matches(tiny_recipe, tmp_path, monkeypatch, trained_folds):
    """--save-inputs here, then --inputs + --shard on a 'machine' with an empty cache and neither
    the recogniser nor the encoders: the shards split the grid, the last run only reads them."""
    import dataclasses

    import koemo.experiments.reproduce as rp

    pack = tmp_path / "inputs.npz"
    here = reproduce(tiny_recipe, tmp_path / "here", progress=False, save_inputs_path=pack, gradcam=False)
    assert pack.is_file()

    elsewhere = dataclasses.replace(tiny_recipe, cache_dir=str(tmp_path / "elsewhere-cache"))

    def no_prepare(*a, **kw):
        raise AssertionError("--inputs must not transcribe or encode")

    monkeypatch.setattr(rp, "prepare_inputs", no_prepare)
    monkeypatch.setattr(ASR_BACKENDS, "get", no_prepare, raising=False)
    here_folds = list(trained_folds)  # (fusion, text, protocol, seed, fold), alone or stacked
    for i in range(3):
        shard = reproduce(elsewhere, tmp_path / "unused", progress=False, inputs_path=pack, shard=f"{i}/3")
        assert shard["shard"] == f"{i}/3"
    assert not (tmp_path / "unused" / "REPORT.md").exists()  # shards write no report
    shards = trained_folds[len(here_folds):]
    assert sorted(shards) == sorted(here_folds) and len(set(shards)) == len(shards)  # each fold by one shard
    n = len(trained_folds)
    final = reproduce(elsewhere, tmp_path / "there", progress=False, inputs_path=pack, gradcam=False)
    assert len(trained_folds) == n  # the report run trained nothing ...
    assert final["meta"]["training_s"] > 0  # ... yet states what training the shards' folds took
    assert "Training (all folds, summed over processes):" in (tmp_path / "there" / "REPORT.md").read_text()
    assert final["table3"] == here["table3"] and final["table4"] == here["table4"]
    assert final["asr"] == here["asr"]

    with pytest.raises(KoemoError, match="I/N"):
        reproduce(elsewhere, tmp_path / "x", progress=False, inputs_path=pack, shard="3/3")
    bigger = dataclasses.replace(elsewhere, eval=dataclasses.replace(elsewhere.eval, table3=["mult@band-energy+other"]))
    with pytest.raises(KoemoError, match="no text features 'other'"):
        reproduce(bigger, tmp_path / "x", progress=False, inputs_path=pack)
    with pytest.raises(KoemoError, match="no such inputs pack"):
        reproduce(elsewhere, tmp_path / "x", progress=False, inputs_path=tmp_path / "missing.npz")
    def repacked(name, edit):
        with np.load(pack) as z:
            arrays = {k: z[k] for k in z.files}
        index = json.loads(bytes(arrays["index"]).decode("utf-8"))
        edit(index)
        arrays["index"] = np.frombuffer(json.dumps(index).encode("utf-8"), dtype=np.uint8)
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(KoemoError, match="inputs pack format 'koemo-inputs-0'"):
        reproduce(elsewhere, tmp_path / "x", progress=False,
                  inputs_path=repacked("old.npz", lambda i: i.update(format="koemo-inputs-0")))
    with pytest.raises(KoemoError, match="packed labels .* differ from the recipe's"):
        reproduce(elsewhere, tmp_path / "x", progress=False,
                  inputs_path=repacked("labels.npz", lambda i: i.update(labels=["calm", "joy", "grief", "rage"])))
    with pytest.raises(KoemoError, match="no id recorded for speech encoder 'band-energy'"):
        reproduce(elsewhere, tmp_path / "x", progress=False,
                  inputs_path=repacked("noid.npz", lambda i: i["encoder_meta"]["speech"].clear()))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(KoemoError, match="not a readable koemo inputs pack"):
        reproduce(elsewhere, tmp_path / "x", progress=False, inputs_path=tmp_path / "bad.npz")


def test_only_trains_the_matching_jobs_into_the_grids_runs_dir(tiny_recipe, tmp_path, trained_folds):
    """--only REGEX trains just those jobs (no report); eval.runs_dir keeps another grid's folds
    apart from the default grid's; the report run then trains only what is left."""
    import dataclasses

    from koemo.training.run import runs_root

    runs = tmp_path / "h128-runs"
    recipe = dataclasses.replace(tiny_recipe, eval=dataclasses.replace(tiny_recipe.eval, runs_dir=str(runs),
                                                                       table4_fusions=["shallow", "mult"]))
    doc = reproduce(recipe, tmp_path / "out", progress=False, gradcam=False, only=r"\.cr_")
    assert doc["only"] == r"\.cr_" and not (tmp_path / "out" / "REPORT.md").exists()
    trained = [text for _, text, *_ in trained_folds]
    assert trained and all(t.startswith("cr:") for t in trained)
    assert runs_root(recipe) == runs and all(".cr_" in p.name for p in runs.iterdir())
    assert not runs_root(tiny_recipe).exists()  # the default grid's folds are elsewhere, untouched
    n = len(trained)
    full = reproduce(recipe, tmp_path / "out", progress=False)
    trained = [text for _, text, *_ in trained_folds]
    assert trained[n:] and not any(t.startswith("cr:") for t in trained[n:])  # the CR folds were reused
    assert [r["model"] for r in full["table4"]] == ["shallow", "mult"] and (tmp_path / "out" / "REPORT.md").is_file()
    # every Table 4 fusion gets its confusion matrices and Grad-CAM shares; the first keeps the plain names
    names = {Path(f["path"]).name for f in full["figures"]}
    assert {"confusion.png", "confusion-mult.png", "modality-human-text.png", "modality-mult-human-text.png",
            "modality-mult-cr-on-asr-tone-asr.png"} <= names
    assert set(full["modality_by_fusion"]) == {"shallow", "mult"}
    assert full["modality"] == full["modality_by_fusion"]["shallow"]
    for v in full["modality_by_fusion"]["mult"]["human text"]["per_label"].values():
        assert v["audio"] + v["text"] == pytest.approx(1.0)
    with pytest.raises(KoemoError, match="matches no job of the grid"):
        reproduce(recipe, tmp_path / "x", progress=False, only="no-such-job")
    with pytest.raises(KoemoError, match="not a regular expression"):
        reproduce(recipe, tmp_path / "x", progress=False, only="(")


def test_auto_commentary_states_signed_changes_and_cr_wins():
    from types import SimpleNamespace

    from koemo.experiments.results import auto_commentary

    res = {"table3": [{"key": "mult@a+t", "mean": {"weighted_f1": 0.7}}], "protocols": [
        {"model": "shallow", "protocol": "speaker-sentence", "mean": {"weighted_f1": 0.60}},
        {"model": "shallow", "protocol": "speaker", "mean": {"weighted_f1": 0.75}}], "table4": [
        {"gold": {"mean": 0.70}, "asr_trained": {"mean": 0.63}, "cr": {"mean": 0.68}},
        {"gold": {"mean": 0.70}, "asr_trained": {"mean": 0.65}, "cr": {"mean": 0.64}}]}
    text = auto_commentary(res, SimpleNamespace(main_protocol="speaker-sentence"))
    assert "Best Table 3 model: mult@a+t at 0.7000" in text
    assert "changes weighted F1 by -6.0 pt on average" in text and "with CR by -4.0 pt" in text
    assert "CR recovers +2.0 pt on average and beats ASR-trained in 1 of 2 rows" in text
    assert "Leakage, shallow: speaker-sentence 0.6000; speaker +15.0 pt." in text


def test_shards_share_the_folds_evenly_and_every_unit_once():
    from koemo.experiments.runner import shard_units

    # the recipe's grid: 3 jobs x 5 seeds of 25 folds and as many text-neutral units of 1 fold
    units = [(job, protocol, seed) for job in "abc" for protocol in ("main", "tn") for seed in range(5)]
    folds = [25 if protocol == "main" else 1 for _, protocol, _ in units]
    shares = [shard_units(units, folds, i, 2) for i in range(2)]
    assert sorted(sum(shares, [])) == sorted(units)  # each unit in exactly one shard
    # 15 units of 25 cannot split evenly: 8 of them and 7 + the 15 small ones (dealing gave 231 / 159)
    assert [sum(folds[units.index(u)] for u in s) for s in shares] == [200, 190]
    assert all(s == sorted(s, key=units.index) for s in shares)  # the grid's order kept
    assert shard_units(units, folds, 1, 2) == shares[1]  # the same share in every process
    loads = [sum(folds[units.index(u)] for u in shard_units(units, folds, i, 4)) for i in range(4)]
    assert max(loads) - min(loads) <= 25 and sum(loads) == 390


def test_the_grid_inputs_carry_the_functionals_with_encoders_prosody(tiny_recipe):
    """``koemo reproduce`` reads its features through its own loader: the switch must reach it
    (and the augmented copies, re-encoded by their transform, get their own functionals)."""
    import dataclasses

    from koemo.encoders.prosody import FEATURES
    from koemo.experiments.grid import make_plan
    from koemo.experiments.inputs import prepare_inputs

    plain, _ = prepare_inputs(make_plan(tiny_recipe), progress=False)
    enc = dataclasses.replace(tiny_recipe.encoders, prosody=True)
    augment = dataclasses.replace(tiny_recipe.augment, copies=1, volume_db=[-6.0, -6.0])
    inputs, _ = prepare_inputs(make_plan(dataclasses.replace(tiny_recipe, encoders=enc, augment=augment)), progress=False)
    u = next(iter(plain.speech["band-energy"]))
    before, after = plain.speech["band-energy"][u], inputs.speech["band-energy"][u]
    assert after.shape == (before.shape[0], before.shape[1] + len(FEATURES))
    assert inputs.encoder_meta["speech"]["band-energy"]["prosody"] is True
    (copy,) = inputs.speech_copies["band-energy"]
    level = FEATURES.index("level_mean")
    # the copy is 6 dB quieter, and its functionals say so
    assert float(after[0, before.shape[1] + level]) - float(copy[u][0, before.shape[1] + level]) == pytest.approx(6.0, abs=0.1)
