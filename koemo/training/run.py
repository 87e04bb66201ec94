"""The fold loop both ``koemo train`` and ``koemo reproduce`` use, and what ``koemo train`` does
around it: manifest -> split -> features -> :func:`run_folds`."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from koemo.config import Recipe, to_dict
from koemo.data.labels import resolve_label_set
from koemo.data.splits import Fold
from koemo.errors import KoemoError, UnknownLabelError
from koemo.paths import atomic_write_text, cache_root
from koemo.sources import TrainingText
from koemo.training import bundle as bundles
from koemo.training import trainer
from koemo.training.data import FeatureData
from koemo.training.trainer import TrainResult

log = logging.getLogger("koemo")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", s)


def default_out(recipe: Recipe) -> Path:
    """``<cache>/runs/<recipe>/<fusion>/<text>/<protocol>[-kK]/seed<S>``; folds are subdirectories."""
    sp = recipe.split
    protocol = sp.protocol + ("" if sp.protocol == "stratified" else f"-k{sp.folds}")
    return (cache_root(recipe.cache_dir) / "runs" / _slug(recipe.name) / _slug(recipe.model.fusion)
            / _slug(recipe.train.text) / protocol / f"seed{sp.seed}")


def runs_root(recipe: Recipe) -> Path:
    """Where ``koemo reproduce`` keeps its fold bundles: ``eval.runs_dir``, else
    ``<cache>/reproduce/<recipe name>``; ``koemo train --final`` reads its cross-validation there."""
    if recipe.eval.runs_dir:
        return Path(recipe.eval.runs_dir).expanduser()
    return cache_root(recipe.cache_dir) / "reproduce" / recipe.name


def model_key(fusion: str, speech: str | None, text: str | None) -> str:
    """A model's name in the grid: ``fusion@speech+text``, ``text-only@TEXT``, ``audio-only@SPEECH``."""
    if fusion == "text-only":
        return f"text-only@{text}"
    if fusion == "audio-only":
        return f"audio-only@{speech}"
    return f"{fusion}@{speech}+{text}"


def job_slug(model_key: str, train_text: str, protocol: str) -> str:
    """The directory name of a (model, training text, protocol) under :func:`runs_root`."""
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", f"{model_key}.{train_text}.{protocol}")


# ---------------------------------------------------------------------------------------------
# the fold loop


@dataclass
class FoldOutcome:
    fold: Fold
    out: Path | None
    trained: bool  # False: a finished bundle of exactly this run was found and reused
    result: TrainResult | None  # None for a reused bundle unless ``load_reused``


def result_from_bundle(out: Path) -> TrainResult:
    """A finished fold's result as its bundle recorded it (no model loaded)."""
    meta = bundles.read_meta(out)
    test = (meta.get("metrics") or {}).get("test") or {}
    preds = {s: bundles.read_predictions(out, s) or [] for s in test}
    return TrainResult(out, meta.get("best_epoch", 0), meta.get("epochs_done", 0), meta.get("valid_source", "gold"),
                       (meta.get("metrics") or {}).get("valid") or {}, test, meta.get("history", []), None, meta, preds)


def run_folds(
    recipe: Recipe, folds: Sequence[Fold], data: FeatureData, *,
    out_for: Callable[[Fold], Path | None], encoders: dict[str, Any] | None = None,
    model_for: Callable[[Fold], Any] | None = None, progress: bool = True, resume: bool = True,
    reuse: bool = True, load_reused: bool = True, on_fold: Callable[[FoldOutcome], None] | None = None,
    input_arrays: dict | None = None,
) -> list[FoldOutcome]:
    """Train every fold of ``folds`` on ``data`` into ``out_for(fold)``.

    A fold whose directory already holds a complete bundle with the same fingerprint (recipe,
    fold and data) is not retrained (``reuse``); its result is read from the bundle when
    ``load_reused``. ``model_for(fold)`` gives a fresh model per fold (end-to-end training);
    ``on_fold`` runs after each fold.

    The folds still to train whose plan says ``stacked`` train together first
    (:mod:`koemo.training.stacked`); the others one at a time, in order."""
    from koemo.allocator import tune_allocator

    tune_allocator()  # training steps reuse freed memory (koemo/allocator.py); not done for serving
    outs = [out_for(fold) for fold in folds]
    plans = [trainer.plan_fold(recipe, fold, data) for fold in folds]
    reused = [reuse and out is not None and model_for is None and bundles.bundle_done(out, plan.fingerprint)
              for out, plan in zip(outs, plans)]
    stack = [i for i, plan in enumerate(plans) if plan.stacked and not reused[i] and model_for is None]
    stacked: dict[int, TrainResult] = {}
    if stack:
        from koemo.training.stacked import train_stacked

        results = train_stacked(recipe, [folds[i] for i in stack], data, [plans[i] for i in stack],
                                [outs[i] for i in stack], encoders=encoders, input_arrays=input_arrays,
                                progress=progress)
        stacked = dict(zip(stack, results))
    outcomes = []
    for i, fold in enumerate(folds):
        out, plan = outs[i], plans[i]
        if reused[i]:
            outcome = FoldOutcome(fold, out, False, result_from_bundle(out) if load_reused else None)
        elif i in stacked:
            outcome = FoldOutcome(fold, out, True, stacked[i])
        else:
            model = model_for(fold) if model_for else None
            res = trainer.train_fold(recipe, fold, data, model=model, out_dir=out, encoders=encoders,
                                     progress=progress, resume=resume, fold_plan=plan, input_arrays=input_arrays)
            outcome = FoldOutcome(fold, out, True, res)
        outcomes.append(outcome)
        if on_fold:
            on_fold(outcome)
    return outcomes


# ---------------------------------------------------------------------------------------------
# koemo train


def check_labels(recipe: Recipe, utts) -> None:
    labels = list(resolve_label_set(recipe.data.label_set))
    for u in utts:
        if u.label not in labels:
            raise UnknownLabelError(
                u.id, f"label {u.label!r} is not in the recipe's label set ({', '.join(labels)}); "
                      f"re-run: koemo data prepare (or set data.label_set)")


@dataclass
class TrainingInputs:
    """What the fold loop needs besides the folds: the data, what the bundles record of the
    encoders and the speech input, and (end to end) a fresh model per fold."""

    data: FeatureData
    encoders: dict
    input_arrays: dict | None = None
    model_for: Callable[[Fold], Any] | None = None


def training_inputs(recipe: Recipe, utts, manifest: Path | str = "manifest", progress: bool = True) -> TrainingInputs:
    """Features (or, end to end, raw inputs) of ``utts`` for the recipe: the training text, gold,
    and ``eval.text`` where present; the speech input view with its augmented copies."""
    labels = list(resolve_label_set(recipe.data.label_set))
    stt = TrainingText.parse(recipe.train.text).stt
    stt = None if stt is None else str(stt)
    sources = ["gold"] + ([stt] if stt else [])
    eval_text = recipe.eval.text
    if eval_text and eval_text not in sources and any(eval_text in u.transcripts for u in utts):
        sources.append(eval_text)
    if stt and not any(stt in u.transcripts for u in utts):
        from koemo.sources import TextSource

        raise KoemoError(f"{manifest}: no utterance has a '{stt}' transcript; "
                         f"run: {TextSource.parse(stt).transcribe_command()}")
    label_of = {u.id: u.label for u in utts}
    if recipe.encoders.finetune:
        from koemo.training.finetune import build_end_to_end, end_to_end_meta, raw_inputs

        audio, text = raw_inputs(utts, sources)

        def model_for(fold: Fold):
            import torch

            torch.manual_seed(recipe.train.seed)
            return build_end_to_end(recipe, len(labels))[0]

        return TrainingInputs(FeatureData(audio, text, label_of, labels), end_to_end_meta(recipe), None, model_for)
    from koemo.training.features import audio_copies, load_features, speech_input, store_for

    audio, text, encoders = load_features(recipe, utts, sources, progress=progress)
    copies = audio_copies(recipe.augment, store_for(recipe), recipe.encoders, utts, progress=progress)
    audio, copies, spec = speech_input(recipe, audio, utts, copies)
    encoders["speech"]["input"] = spec.meta()
    return TrainingInputs(FeatureData(audio, text, label_of, labels, copies), encoders, spec.arrays())


@dataclass
class RunSummary:
    out: Path
    folds: list[tuple[str, TrainResult]]
    pooled_test: dict[str, dict[str, float]]  # test metrics over all trained folds' predictions

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "folds": {name: {"best_epoch": r.best_epoch, "valid_source": r.valid_source,
                             "valid_weighted_f1": r.valid.get("weighted_f1"),
                             "test": {s: m["weighted_f1"] for s, m in r.test.items()}}
                      for name, r in self.folds},
            "pooled_test": self.pooled_test,
        }


def train_recipe(
    recipe: Recipe, *, folds: Sequence[int] | None = None, out: str | Path | None = None,
    data_dir: str | None = None, progress: bool = True, resume: bool = True,
) -> RunSummary:
    """Train the recipe's fusion model on the chosen folds (default: all) of its split."""
    from koemo.data.prepare import load_or_prepare
    from koemo.data.prepare import split as make_split

    rank, world, device = trainer.init_distributed(recipe.train.device)
    recipe.train.device = device
    manifest, utts = load_or_prepare(recipe, data_dir)
    check_labels(recipe, utts)
    _, fold_list = make_split(recipe, utts, manifest) if rank == 0 else (None, None)
    if fold_list is None:
        from koemo.data.splits import folds_of

        fold_list = folds_of(recipe.split, utts)
    chosen = list(range(len(fold_list))) if folds is None else list(folds)
    for i in chosen:
        if not 0 <= i < len(fold_list):
            raise KoemoError(f"--fold {i}: the {recipe.split.protocol} split has folds 0..{len(fold_list) - 1}")
    needed = {u for i in chosen for f in (fold_list[i],) for u in f.train + f.valid + f.test}
    inputs = training_inputs(recipe, [u for u in utts if u.id in needed], manifest, progress and rank == 0)
    labels = inputs.data.label_list

    base = Path(out) if out else default_out(recipe)
    outcomes = run_folds(recipe, [fold_list[i] for i in chosen], inputs.data, out_for=lambda f: base / _slug(f.name),
                         encoders=inputs.encoders, model_for=inputs.model_for, progress=progress, resume=resume,
                         input_arrays=inputs.input_arrays)
    results = [(o.fold.name, o.result) for o in outcomes]
    summary = RunSummary(base, results, _pooled(results, labels))
    if rank == 0:
        doc = {"recipe": to_dict(recipe), "manifest": str(manifest), "world_size": world, **summary.to_dict()}
        atomic_write_text(base / "summary.json", json.dumps(doc, ensure_ascii=False, indent=1))
    return summary


def _pooled(results: list[tuple[str, TrainResult]], labels: list[str]) -> dict:
    """Metrics over the pooled test predictions of all trained folds (in the cross-validation
    protocols each clip is tested once per seed, so all folds together cover the data once)."""
    from koemo.metrics import compute_metrics

    sources = set.intersection(*(set(r.predictions) for _, r in results)) if results else set()
    out = {}
    for source in sorted(sources):
        preds = [p for _, r in results for p in r.predictions[source]]
        out[source] = compute_metrics([p.label for p in preds], [p.pred for p in preds], labels).scalars()
        out[source]["n"] = len(preds)
    return out
