"""The text-neutral protocol in the grid, and the shipped model (koemo train --final): held-out
calibration in the bundle, the model card, and the speech stage predict rebuilds from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from koemo.config import Recipe, load_config
from koemo.errors import KoemoError
from koemo.experiments.reproduce import reproduce
from tests.experiments.test_reproduce import FREQS, LABELS, WORDS, BandEnergy, CharHash  # noqa: F401 (register)


@pytest.fixture
def voice_recipe(tmp_path):
    """4 speakers reading emotional sentences (the words give the label away) and 2 speakers
    reading 2 plain sentences in every emotion (text-neutral); pitch carries the emotion."""
    rng = np.random.default_rng(0)
    rows = ["audio,text,label,speaker,group"]
    (tmp_path / "wav").mkdir()
    clips = [(s, j, LABELS[j % 4], f"문장{j} {WORDS[LABELS[j % 4]]}", f"sent{j}") for s in range(4) for j in range(8)]
    clips += [(s, 10 * k + e, LABELS[e], f"평범한 문장 {k}", f"plain{k}") for s in (4, 5) for k in range(2)
              for e in range(4) for _ in range(2)]
    for n, (s, j, label, text, group) in enumerate(clips):
        t = np.arange(8000) / 16000
        wav = 0.3 * np.sin(2 * np.pi * FREQS[label] * (1 + 0.03 * s) * t) + 0.02 * rng.standard_normal(t.size)
        name = f"wav/s{s}_{n:03d}.wav"
        sf.write(tmp_path / name, wav.astype(np.float32), 16000)
        rows.append(f"{name},{text},{label},spk{s},{group}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = tmp_path / "voice.yaml"
    recipe.write_text(f"""
name: voice
data: {{dataset: manifest, root: {tmp_path / 'data.csv'}, label_set: emotiontts4}}
split: {{protocol: speaker-sentence, folds: 2, valid: none}}
encoders: {{speech: band-energy, text: char-hash, normalise: speaker}}
model: {{fusion: linear, hidden: 8, heads: 2, dropout: 0.0, standardise: true}}
train: {{lr: 0.01, epochs: 4, batch_size: 8, text: gold, weight_decay: 0.001}}
eval:
  text: gold
  seeds: 2
  text_neutral: true
  table3: [shallow@band-energy+char-hash, linear@band-energy+char-hash]
""", encoding="utf-8")
    return load_config(Recipe, recipe)


def test_every_row_gets_text_neutral_scores_and_calibration(voice_recipe, tmp_path):
    doc = reproduce(voice_recipe, tmp_path / "out", progress=False, gradcam=False)
    for row in doc["table3"]:
        assert 0 <= row["text_neutral"]["mean"] <= 1 and 0 <= row["text_neutral_subset"]["mean"] <= 1
        assert 0 <= row["mean"]["ece"] <= 1 and row["mean"]["nll"] > 0
        assert row["calibrated"]["temperature"] > 0
    jobs = doc["plan"]["jobs"]
    assert "linear@band-energy+char-hash.gold.text-neutral" in jobs
    report = (tmp_path / "out" / "REPORT.md").read_text(encoding="utf-8")
    assert "text-neutral F1" in report and "figures/reliability.png" in report
    # koemo evaluate recomputes a normalised bundle's predictions exactly as the trainer made them
    from koemo.evaluation.evaluate import predict_bundle
    from koemo.experiments.grid import Job, parse_model
    from koemo.experiments.runner import fold_dir
    from koemo.training.bundle import read_predictions

    bundle = fold_dir(voice_recipe, Job(parse_model("linear@band-energy+char-hash"), "gold", "speaker-sentence"),
                      1, "spk0-sent1")
    stored = read_predictions(bundle, "gold")
    computed = predict_bundle(bundle, "gold", progress=False)
    assert [p.id for p in computed] == [p.id for p in stored]
    np.testing.assert_allclose([p.probs for p in computed], [p.probs for p in stored], atol=1e-4)
    assert (tmp_path / "out" / "figures" / "reliability.png").stat().st_size > 0


def test_the_final_model_carries_its_calibration_card_and_speech_stage(voice_recipe, tmp_path):
    from koemo.serving.loader import speech_stage_of
    from koemo.training.bundle import load_bundle
    from koemo.training.final import train_final

    import koemo.training.final as final

    reproduce(voice_recipe, tmp_path / "grid", progress=False, gradcam=False)
    trained = []
    original = final.run_folds

    def counting(*a, **kw):
        outcomes = original(*a, **kw)
        trained.extend(o.fold.name for o in outcomes if o.trained)
        return outcomes

    final.run_folds = counting
    try:
        out = tmp_path / "final"
        meta = train_final(voice_recipe, out, progress=False)
    finally:
        final.run_folds = original
    assert trained == ["all"]  # the cross-validation is the grid's (same folds, same fingerprints)
    cal = meta["calibration"]
    # fitted on the held-out predictions of both protocols (64 clips, and the 32 text-neutral tests)
    assert cal["n"] == 96 and cal["temperature"] > 0 and 0 <= cal["ece_cross_fitted"] <= 1
    assert {k: v["n"] for k, v in cal["by_protocol"].items()} == {"speaker-sentence": 64, "text-neutral": 32}
    assert set(meta["cross_validation"]) == {"speaker-sentence", "text-neutral"}
    # the same held-out clips re-scored as lone clips (corpus statistics): their own temperature
    lone = cal["corpus_normalised"]
    assert lone["n"] == 96 and lone["temperature"] > 0 and lone["nll_before"] != pytest.approx(cal["nll_before"])
    b = load_bundle(out)
    assert b.meta["final"] and b.meta["split"]["n_train"] == 64 and b.meta["split"]["fold"] == "all"
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "temperature" in card and "text-neutral" in card and "Licences" in card
    assert f"temperature {lone['temperature']:.3f} of its own" in card
    stage = speech_stage_of(b)
    assert stage.view == "stats" and stage.normaliser.mode == "speaker"
    np.testing.assert_allclose(stage.normaliser.corpus_mean, b.input_arrays()["corpus_mean"])
    # a re-run reuses the cross-validation and the final bundle (nothing retrained)
    again = train_final(voice_recipe, out, progress=False)
    assert again["calibration"] == cal
    assert json.loads((out / "bundle.json").read_text())["calibration"]["temperature"] == cal["temperature"]
    bad = load_config(Recipe, None, ["split.valid=holdout"])

    with pytest.raises(KoemoError, match="split.valid: none"):
        train_final(bad, tmp_path / "x", progress=False)


def test_the_card_reports_the_seeds_mean_ece_and_each_licence_once():
    """The card's ECE column is the mean over the seeds (not the first seed's), and a Whisper used
    as both recogniser and speech encoder is licensed once."""
    from koemo.cliutil import recipe_from
    from koemo.training.card import render

    recipe = recipe_from("emotiontts", [])
    seeds = [{"weighted_f1": 0.8, "ece": 0.02}, {"weighted_f1": 0.9, "ece": 0.06}]
    meta = {"labels": ["neutral", "happy"], "model": {"fusion": "linear"}, "trained_on": {"clips": 300},
            "cross_validation": {"speaker-sentence": {"source": "asr:whisper-base", "weighted_f1": 0.85,
                                                      "seeds": seeds}}}
    card = render(recipe, meta)
    row = next(line for line in card.splitlines() if line.startswith("| speaker-sentence"))
    assert row.endswith("| 0.040 |") and "(0.800, 0.900)" in row
    assert card.count("Whisper base (OpenAI): MIT") == 1 and "Gemma Terms of Use" in card


def test_the_final_model_trains_a_second_head_for_lone_clips_in_its_own_runs(voice_recipe, tmp_path):
    import dataclasses

    from koemo.training.final import lone_recipe, train_final

    recipe = dataclasses.replace(voice_recipe, train=dataclasses.replace(
        voice_recipe.train, lone_head=["augment.copies=1", "augment.volume_db=[-6,6]"]))
    recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, runs_dir=str(tmp_path / "runs")))
    sub = lone_recipe(recipe)
    assert (sub.name, sub.augment.copies, sub.train.lone_head) == ("voice-lone", 1, [])
    assert sub.eval.runs_dir == str(tmp_path / "runs" / "lone")
    from koemo.data.prepare import manifest_path

    assert manifest_path(sub) == manifest_path(recipe)  # the first head's clips and transcripts
    meta = train_final(recipe, tmp_path / "final", progress=False)
    head = meta["lone_head"]
    assert head["overrides"] == recipe.train.lone_head and head["temperature"] > 0
    assert set(head["weighted_f1"]) == {"speaker-sentence", "text-neutral"}
    assert (tmp_path / "final" / "lone" / "bundle.json").is_file()
    assert any((tmp_path / "runs" / "lone").rglob("bundle.json"))  # its folds beside, not over, the first's
    lone_meta = json.loads((tmp_path / "final" / "lone" / "bundle.json").read_text())
    assert lone_meta["calibration"]["corpus_normalised"]["temperature"] == head["temperature"]
    card = (tmp_path / "final" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "second head (`lone/`, trained with `augment.copies=1`, `augment.volume_db=[-6,6]`)" in card
    # the same bundle re-made by a recipe without a second head: the old one is not left to serve
    again = train_final(voice_recipe, tmp_path / "final", progress=False)
    assert "lone_head" not in again and not (tmp_path / "final" / "lone").exists()
    with pytest.raises(KoemoError, match="encoders.normalise: speaker"):
        train_final(dataclasses.replace(recipe, encoders=dataclasses.replace(recipe.encoders, normalise="none")),
                    tmp_path / "x", progress=False)
