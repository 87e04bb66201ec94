"""``koemo train --final``: the shipped model. Cross-validate the recipe (held-out predictions for
calibration and the model card), train once more on every clip for ``train.epochs``, fit the
temperature on the held-out predictions, write the bundle's ``MODEL_CARD.md``.

The cross-validation runs the recipe's own protocol (``split``) for ``seeds`` seeds plus the
text-neutral protocol where the data has one; its fold bundles are those of ``koemo reproduce``
(the recipe's model and training text under ``<cache>/reproduce/<recipe>/``), so a grid that ran
them already (``make demo``'s) is read, not retrained, as is the final bundle on a re-run.
The temperature is fitted on all held-out predictions of the service text, of both protocols (the
text-neutral one is the harder case, speech whose words carry no emotion, as on most other
corpora; fitted on the main protocol alone the temperature sharpened the probabilities there and
raised their ECE); the card's ECE is *cross-fitted* (each fold's predictions scaled by the
temperature of the other folds), so no prediction is calibrated on itself. With speaker
normalisation a second temperature is fitted the same way on those predictions re-scored with
the corpus statistics (:func:`corpus_normalised`): the service applies it where a clip has no
group large enough for statistics of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from koemo.config import Recipe
from koemo.data.splits import Fold
from koemo.errors import KoemoError
from koemo.metrics import compute_metrics
from koemo.training import bundle as bundles
from koemo.sources import TrainingText
from koemo.training.run import check_labels, job_slug, model_key, run_folds, runs_root, training_inputs
from koemo.training.trainer import FINAL_FOLD

log = logging.getLogger("koemo")


def cv_dir(recipe: Recipe, protocol: str) -> Path:
    """The grid's directory of the recipe's model, training text and ``protocol``."""
    key = model_key(recipe.model.fusion, recipe.encoders.speech, recipe.encoders.text)
    return runs_root(recipe) / job_slug(key, str(TrainingText.parse(recipe.train.text)), protocol)


def _held_out(outcomes, source: str) -> list:
    """The folds' test predictions as their bundles store them (also for folds trained just now),
    so a re-run that reuses the bundles calibrates on exactly the same numbers."""
    preds = []
    for o in outcomes:
        preds += bundles.read_predictions(o.out, source) or []
    return preds


def calibration_of(preds: list, labels: list[str], protocols: list[str] | None = None) -> dict[str, Any]:
    """Temperature fitted on ``preds`` and the cross-fitted scores before and after (see above);
    with ``protocols`` (one per prediction) the scores of each protocol's share too."""
    from koemo.calibration import cross_fitted, ece, fit_temperature, nll

    index = {label: i for i, label in enumerate(labels)}
    probs = np.array([p.probs for p in preds], dtype=np.float64)
    y = np.array([index[p.label] for p in preds])
    tags = protocols or [""] * len(preds)
    groups = [f"{t}/{p.seed}/{p.fold}" for t, p in zip(tags, preds)]
    scaled, _ = cross_fitted(probs, y, groups)
    out = {"temperature": fit_temperature(probs, y), "n": len(preds),
           "ece_before": ece(probs, y), "nll_before": nll(probs, y),
           "ece_cross_fitted": ece(scaled, y), "nll_cross_fitted": nll(scaled, y)}
    if protocols:
        out["by_protocol"] = {}
        for tag in dict.fromkeys(protocols):
            mine = np.array([t == tag for t in protocols])
            out["by_protocol"][tag] = {"n": int(mine.sum()), "ece_before": ece(probs[mine], y[mine]),
                                       "ece_cross_fitted": ece(scaled[mine], y[mine])}
    return out


def corpus_normalised(recipe: Recipe, utts, outcomes, data, source: str) -> list[list]:
    """Each fold's held-out predictions again, each test clip's voice standardised by the corpus
    statistics instead of its speaker's: what a lone clip (a request without a session,
    ``--normalise none``) gets in service. Its confidence differs from the speaker-normalised
    one (higher than its accuracy), so it gets its own temperature (docs/voice.md)."""
    from koemo.training.data import FeatureData
    from koemo.training.features import load_features, speech_input
    from koemo.training.steps import predict_proba

    frames, _, _ = load_features(recipe, utts, [], progress=False)
    alone = speech_input(recipe, frames, [dataclasses.replace(u, speaker=u.id) for u in utts])[0]
    lone = FeatureData(alone, data.text, data.labels, data.label_list)
    per_fold = []
    for o in outcomes:
        held = bundles.read_predictions(o.out, source) or []
        probs = predict_proba(bundles.load_bundle(o.out).model, lone, [p.id for p in held], source) if held else []
        per_fold.append([dataclasses.replace(p, probs=[float(x) for x in q], pred=data.label_list[int(np.argmax(q))])
                         for p, q in zip(held, probs)])
    return per_fold


def _scores(preds: list, labels: list[str]) -> dict[str, float]:
    m = compute_metrics([p.label for p in preds], [p.pred for p in preds], labels, [p.probs for p in preds])
    return {k: round(v, 4) for k, v in m.scalars().items()} | {"n": len(preds)}


def train_final(recipe: Recipe, out: str | Path, *, data_dir: str | None = None, seeds: int = 1,
                progress: bool = True) -> dict[str, Any]:
    """Cross-validate, train on every clip, calibrate, write the card (module docstring)."""
    from koemo.data.prepare import load_or_prepare
    from koemo.data.splits import folds_of

    if recipe.split.valid != "none":
        raise KoemoError("koemo train --final trains on every clip for train.epochs; use a recipe with "
                         "split.valid: none, so that its cross-validation ran the same way")
    if recipe.train.lone_head and (recipe.encoders.normalise != "speaker" or recipe.encoders.finetune):
        raise KoemoError("train.lone_head serves clips the corpus statistics normalise: it needs "
                         "encoders.normalise: speaker (and frozen encoders)")
    out = Path(out)
    # the canonical training text (cr:B -> cr:asr:B): the grid's folds have the same fingerprint
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(
        recipe.train, text=str(TrainingText.parse(recipe.train.text))))
    manifest, utts = load_or_prepare(recipe, data_dir)
    check_labels(recipe, utts)
    inputs = training_inputs(recipe, utts, manifest, progress)
    labels = inputs.data.label_list
    source = TrainingText.parse(recipe.train.text).service_source
    cv: dict[str, Any] = {}
    held_out, tags, scored_outcomes = [], [], []
    for protocol in [recipe.split.protocol] + (["text-neutral"] if recipe.split.protocol != "text-neutral" else []):
        per_seed = []
        for seed in range(seeds):
            r = dataclasses.replace(recipe, split=dataclasses.replace(recipe.split, protocol=protocol, seed=seed),
                                    train=dataclasses.replace(recipe.train, seed=seed, checkpoint_every=0))
            try:
                folds = folds_of(r.split, utts)
            except KoemoError as e:
                log.info("final: no %s protocol on this data (%s)", protocol, e)
                break
            root = cv_dir(recipe, protocol) / f"seed{seed}"
            outcomes = run_folds(r, folds, inputs.data, out_for=lambda f, root=root: root / f.name,
                                 encoders=inputs.encoders, progress=progress, input_arrays=inputs.input_arrays)
            preds = _held_out(outcomes, source)
            per_seed.append(_scores(preds, labels))
            held_out += preds
            tags += [protocol] * len(preds)
            scored_outcomes += [(protocol, o) for o in outcomes]
        if per_seed:
            cv[protocol] = {"source": source, "seeds": per_seed,
                            "weighted_f1": float(np.mean([s["weighted_f1"] for s in per_seed]))}
    calibration = calibration_of(held_out, labels, tags)
    log.info("final: temperature %.3f fitted on %d held-out predictions (cross-fitted ECE %.3f -> %.3f)",
             calibration["temperature"], calibration["n"], calibration["ece_before"], calibration["ece_cross_fitted"])
    if recipe.encoders.normalise == "speaker" and not recipe.encoders.finetune:
        lone_preds, lone_tags = [], []
        for (protocol, _), got in zip(scored_outcomes, corpus_normalised(
                recipe, utts, [o for _, o in scored_outcomes], inputs.data, source)):
            lone_preds += got
            lone_tags += [protocol] * len(got)
        lone = calibration_of(lone_preds, labels, lone_tags)
        lone["weighted_f1"] = {t: _scores([p for p, tag in zip(lone_preds, lone_tags) if tag == t], labels)["weighted_f1"]
                               for t in dict.fromkeys(lone_tags)}  # pooled over the seeds
        calibration["corpus_normalised"] = lone
        log.info("final: a lone clip (corpus statistics): temperature %.3f (cross-fitted ECE %.3f -> %.3f)",
                 lone["temperature"], lone["ece_before"], lone["ece_cross_fitted"])
    everything = Fold(FINAL_FOLD, sorted(u.id for u in utts), [], [])
    run_folds(recipe, [everything], inputs.data, out_for=lambda f: out, encoders=inputs.encoders,
              progress=progress, input_arrays=inputs.input_arrays)
    meta = bundles.read_meta(out)
    meta.update({"calibration": calibration, "cross_validation": cv, "final": True,
                 "trained_on": {"manifest": str(manifest), "clips": len(utts)}})
    if recipe.train.lone_head:
        meta["lone_head"] = _lone_head(recipe, out, data_dir=data_dir, seeds=seeds, progress=progress)
    else:  # a head left by an earlier recipe would still be served
        meta.pop("lone_head", None)
        if (out / bundles.LONE_HEAD).exists():
            log.info("final: %s removed (this recipe has no train.lone_head)", out / bundles.LONE_HEAD)
            shutil.rmtree(out / bundles.LONE_HEAD)
    bundles.update_meta(out, meta)
    from koemo.training.card import write_card

    write_card(out, recipe, meta)
    return meta


def lone_recipe(recipe: Recipe) -> Recipe:
    """The recipe of the second head (``train.lone_head``): the recipe with those overrides, its
    own name and runs directory (its folds must not land on the first head's), the first's
    manifest (with its transcripts), no third head."""
    from koemo.config import with_overrides
    from koemo.data.prepare import manifest_path

    runs = recipe.eval.runs_dir
    return with_overrides(recipe, [*recipe.train.lone_head, f"name={recipe.name}-lone", "train.lone_head=[]",
                                   f"eval.runs_dir={str(Path(runs) / 'lone') if runs else 'null'}",
                                   f"data.manifest={manifest_path(recipe)}"])


def _lone_head(recipe: Recipe, out: Path, **kw) -> dict[str, Any]:
    """Train the head for lone clips into ``out/lone`` (cross-validated and calibrated like the
    first: its lone-clip temperature is the one the service applies with it). Why a second head:
    a lone clip is normalised by the studio corpus's statistics, so a new channel moves its
    input, and training on noisy, re-levelled copies helps it (one copy: +9-24 points under
    reverb, babble, a lower level) but costs 3-5 points where a session normalises the channel away
    (docs/voice.md, "Speech recorded elsewhere"); with two heads each case gets its own."""
    sub = lone_recipe(recipe)
    got = train_final(sub, out / bundles.LONE_HEAD, **kw)
    lone = got["calibration"].get("corpus_normalised") or {}
    # the temperature the service applies with this head (koemo.serving.loader reads it the same way)
    return {"overrides": list(recipe.train.lone_head), "temperature": bundles.temperatures(got)[1],
            "weighted_f1": lone.get("weighted_f1", {})}
