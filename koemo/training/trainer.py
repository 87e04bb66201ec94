"""The trainer: one fold of one recipe, from feature mappings to a model bundle.

Entry point :func:`train_fold` (``koemo train`` and ``koemo reproduce`` reach it through
:func:`koemo.training.run.run_folds`). What it does, step by step (:class:`_FoldRun`):

1. **plan** (:func:`plan_fold`): the text sources (``gold`` golden path, ``asr:B`` STT path,
   ``cr:B`` both paths with loss ``CE + lambda * KL``, :mod:`koemo.training.losses`), checks that
   the data covers the fold, and the run's fingerprint; validation, and so the checkpoint choice,
   uses the text the model will meet in service (the STT path for ``asr:``/``cr:``);
2. **build**: the recipe's fusion model for the data's dimensions (or a given encoders+fusion
   module), Adam, optional balanced class weights;
3. **resume**: from the bundle's resume state (a killed run restarts at the epoch after the last
   checkpoint and ends bit-for-bit where an uninterrupted run ends: the shuffle and dropout seeds
   depend only on seed and epoch), or from a complete bundle of the same fingerprint;
4. **epochs**: ``train.batch_size`` examples per optimiser step, split into ``train.grad_accum``
   micro-batches and over data-parallel processes (:func:`accumulate_step`); best-on-validation
   (weighted F1, ties broken by NLL) weights kept, optional early stopping; a checkpoint every
   ``train.checkpoint_every`` epochs;
5. **finish**: the best weights tested on every text source the data has for the test clips,
   the complete bundle written (:mod:`koemo.training.bundle`).

``train.seed`` seeds the initialisation, the per-epoch shuffle and dropout (the split has its
own ``split.seed``; ``koemo train --seed S`` sets both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from koemo.config import AugmentConfig, Recipe, to_dict
from koemo.data.labels import resolve_label_set
from koemo.data.splits import Fold
from koemo.errors import KoemoError
from koemo.fusion.base import reads_text_means, speech_mean_window
from koemo.metrics import Prediction
from koemo.sources import TrainingText
from koemo.training import bundle as bundles
from koemo.training.data import FeatureData
from koemo.training.distributed import all_reduce_sums, barrier, dist_info, init_distributed, to_device
from koemo.training.losses import CRVariant, ce_sum, class_weights, cr_sum
from koemo.training.steps import accumulate_step, autocast, blank_modalities, check_settings, lr_at, predict_proba, score

log = logging.getLogger("koemo")

EpochCallback = Callable[[int, dict], None]

__all__ = ["FoldPlan", "TrainResult", "accumulate_step", "autocast", "bundle_done", "dist_info",
           "init_distributed", "plan_fold", "predict_proba", "score", "train_fold"]
bundle_done = bundles.bundle_done


@dataclass
class TrainResult:
    out_dir: Path | None
    best_epoch: int  # 1-based
    epochs_run: int
    valid_source: str
    valid: dict[str, float]
    test: dict[str, dict[str, float]]
    history: list[dict] = field(default_factory=list)
    model: nn.Module | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, list] = field(default_factory=dict)  # test, per source (Prediction)


# ---------------------------------------------------------------------------------------------
# 1. plan


#: config fields added after bundles were first fingerprinted, with the default that leaves a
#: fold's fingerprint as it was before the field existed (cached grids stay valid)
FINGERPRINT_NEUTRAL = {
    ("train", "precision"): "fp32", ("model", "options"): {}, ("model", "standardise"): False,
    ("split", "valid"): "holdout", ("encoders", "normalise"): "none", ("encoders", "normalise_min_clips"): 3,
    ("train", "text_dropout"): 0.0, ("train", "audio_dropout"): 0.0, ("model", "layer_mix"): "weighted",
    ("model", "pooling"): "mean", ("encoders", "speech_pool"): 1,
    ("augment", None): to_dict(AugmentConfig()), ("train", "stack_folds"): False,
    ("augment", "mixed_groups"): 0, ("asr", "shared_pass"): False, ("encoders", "speech_window"): "30s",
    ("encoders", "prosody"): False, ("encoders", "trim_margin"): None, ("augment", "channel"): 0.0,
    ("train", "lr_schedule"): "constant", ("encoders", "speech_layers"): None,
}


#: the fold of a model trained on every clip (no validation, no test)
FINAL_FOLD = "all"


def stack_refusal(recipe: Recipe, fold: Fold, world: int = 1) -> str | None:
    """Why ``fold`` trains alone rather than stacked with the other folds of its row
    (:mod:`koemo.training.stacked`); ``None`` when it can be stacked."""
    tc = recipe.train
    if not tc.stack_folds:
        return "train.stack_folds is off"
    if world > 1:
        return "data-parallel processes"
    if recipe.encoders.finetune:
        return "end-to-end encoders"
    return None


def _fingerprint(cfg: dict, fold: Fold, data_hash: str, world: int) -> str:
    cfg = json.loads(json.dumps(cfg))
    # may change between a run and its resume (not epochs under a cosine schedule: its length);
    # lone_head: a second model koemo train --final trains
    cosine = cfg.get("train", {}).get("lr_schedule") == "cosine"
    for key in ("early_stopping", "device", "checkpoint_every", "lone_head") + (() if cosine else ("epochs",)):
        cfg.get("train", {}).pop(key, None)
    for (section, key), neutral in FINGERPRINT_NEUTRAL.items():
        if key is None:  # a whole section added later
            if cfg.get(section) == neutral:
                cfg.pop(section)
        elif key in cfg.get(section, {}) and cfg[section][key] == neutral:
            cfg[section].pop(key)
    # The evaluation grid does not change how a fold trains (what it is tested on is in the data
    # hash): adding a row to eval.table3 must not retrain every other fold of koemo reproduce.
    cfg.pop("eval", None)
    doc = {"config": cfg, "fold": [fold.name, fold.train, fold.valid, fold.test], "data": data_hash,
           "world": world}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class FoldPlan:
    """What a fold reads and its fingerprint: decided before training, so that a caller can tell
    whether a finished bundle already holds this run (:func:`bundle_done`) without training."""

    mode: str
    stt: str | None
    variant: CRVariant | None
    labels: list[str]
    train_sources: list[str]
    valid_source: str
    test_sources: list[str]
    config: dict[str, Any]
    data_hash: str
    fingerprint: str
    stacked: bool = False  # trained together with the other folds of its row (stack_refusal)


def plan_fold(recipe: Recipe, fold: Fold, data: FeatureData, stack: bool = True) -> FoldPlan:
    """Check the data covers the fold (clear errors, with the utterance id) and fingerprint it.
    ``stack``: the caller trains stackable folds together (:func:`koemo.training.run.run_folds`);
    ``False``: this fold trains alone whatever :func:`stack_refusal` says."""
    tc = recipe.train
    text = TrainingText.parse(tc.text)
    variant = CRVariant(tc.cr_lambda, tc.cr_ce_path, tc.cr_kl, tc.cr_detach_target) if text.mode == "cr" else None
    train_sources, valid_source = text.train_sources, text.service_source
    labels = list(resolve_label_set(recipe.data.label_set))
    if list(data.label_list) != labels:
        raise KoemoError(f"data labels {data.label_list} differ from the recipe's {labels}")
    data.check(fold.train, train_sources, "training")
    if fold.valid or recipe.split.valid != "none":
        data.check(fold.valid, [valid_source], "validation")
    if fold.test or fold.name != FINAL_FOLD:  # the final model (koemo train --final) has no test side
        data.check(fold.test, [valid_source], "test")
    test_sources = [] if not fold.test else [valid_source] + sorted(
        s for s in data.text if s != valid_source and all(u in data.text[s] for u in fold.test)
    )
    for s in test_sources[1:]:
        data.check(fold.test, [s], "test")
    data_hash = data.data_hash([(fold.train, train_sources), (fold.valid, [valid_source]),
                                (fold.test, test_sources)])
    cfg_dict = to_dict(recipe)
    world = dist_info()[1]
    stacked = stack and stack_refusal(recipe, fold, world) is None
    cfg_dict["train"]["stack_folds"] = stacked  # what happens, so a fold trained alone keeps its fingerprint
    fingerprint = _fingerprint(cfg_dict, fold, data_hash, world)
    return FoldPlan(text.mode, None if text.stt is None else str(text.stt), variant, labels, train_sources,
                    valid_source, test_sources, cfg_dict, data_hash, fingerprint, stacked)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _rng_for(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """torch's seed for an epoch's random draws (modality dropout, copies, dropout)."""
    return seed * 1_000_003 + epoch * 7919 + rank


class _FoldRun:
    """One fold's training state, advanced by the steps :func:`train_fold` calls in order."""

    # ---- 2. build
    def __init__(self, recipe: Recipe, fold: Fold, data: FeatureData, plan: FoldPlan,
                 model: nn.Module | None, out: Path | None):
        from koemo.fusion import build_from_config

        self.recipe, self.fold, self.data, self.plan, self.out = recipe, fold, data, plan, out
        self.tc = tc = recipe.train
        self.device, self.precision = tc.device, tc.precision
        self.rank, self.world = dist_info()
        torch.manual_seed(tc.seed)
        self.end_to_end = model is not None and not hasattr(model, "embed")
        self.fresh = model is None
        if model is None:
            a_dim, t_dim = data.dims(plan.train_sources[0])
            model = build_from_config(recipe.model, a_dim, t_dim, len(plan.labels), data.audio_layers())
        self.model = model.to(self.device)
        self.optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                                      weight_decay=tc.weight_decay)
        self.cw = (class_weights(data.y(fold.train).tolist(), len(plan.labels)).to(self.device)
                   if tc.class_weights else None)
        self.start_epoch, self.history = 0, []
        self.best: dict[str, Any] = {"f1": -1.0, "epoch": 0, "state": None, "bad": 0}
        self.net: nn.Module = model
        #: the head reads the mean text vector only: batches carry it instead of every token's
        self.text_means = reads_text_means(model)
        #: the head reads the mean of its pooled speech windows only: batches carry that mean
        self.speech_means = speech_mean_window(model)

    # ---- 3. resume
    def resume(self) -> None:
        """Continue an interrupted run (resume state) or take over a complete bundle of this run."""
        out, fingerprint = self.out, self.plan.fingerprint
        state = bundles.read_resume_state(out)
        if state is None and (out / bundles.META).exists():
            meta = bundles.read_meta(out)
            if meta.get("complete") and meta.get("fingerprint") == fingerprint:
                log.info("%s: already trained (complete bundle); evaluating it", out)
                self.model.load_state_dict(bundles.load_weights(out / bundles.WEIGHTS))
                self.start_epoch = self.tc.epochs
                self.history = meta.get("history", [])
                self.best = {"f1": meta["metrics"]["valid"]["weighted_f1"], "epoch": meta["best_epoch"],
                             "state": _state_copy(self.model), "bad": 0}
        if state is not None:
            if state["fingerprint"] != fingerprint:
                raise KoemoError(f"{out}: holds a different run (config, fold or data changed); "
                                 "use another --out or start over with --no-resume")
            self.model.load_state_dict(state["model"])
            self.optim.load_state_dict(state["optim"])
            self.start_epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
            log.info("%s: resuming after epoch %d of %d", out, self.start_epoch, self.tc.epochs)

    def fit_inputs(self) -> None:
        """Standardisation statistics from the training clips (a fresh model that wants them)."""
        if self.fresh and getattr(self.model, "standardised", False) and self.start_epoch == 0:
            ids, data = self.fold.train, self.data
            self.model.fit_standardiser([data.audio[u] for u in ids],
                                        [data.text[s][u] for s in self.plan.train_sources for u in ids])

    def wrap_parallel(self) -> None:
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    # ---- 4. epochs
    def micro_loss(self, ids: Sequence[str]) -> tuple[torch.Tensor, dict]:
        """The loss summed over ``ids``: CE on the training text, or CE + lambda * KL (``cr``)."""
        data, plan = self.data, self.plan
        y = data.y(ids).to(self.device)
        drop, copy = self.draws(len(ids))

        def forward(pairs):  # under train.precision; the losses see fp32 logits
            batch = data.batch(pairs, copy * (len(pairs) // len(ids)) if copy else None, self.text_means,
                               self.speech_means)
            if drop is not None:
                repeat = len(pairs) // len(ids)  # the cr mode's two paths drop the same modalities
                blank_modalities(batch, drop[0].repeat(repeat), drop[1].repeat(repeat))
            with autocast(self.device, self.precision):
                return self.net(**to_device(batch, self.device)).float()

        if plan.mode == "cr":
            # one forward over both paths: golden-path rows first, then the STT-path rows
            logits = forward([(u, "gold") for u in ids] + [(u, plan.stt) for u in ids])
            return cr_sum(logits[: len(ids)], logits[len(ids):], y, plan.variant, self.cw)
        loss = ce_sum(forward([(u, plan.train_sources[0]) for u in ids]), y, self.cw)
        return loss, {"ce": float(loss.detach())}

    def draws(self, n: int, generator: torch.Generator | None = None
              ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, list[int] | None]:
        """The random choices of a step of ``n`` examples, from ``generator`` (default: torch's,
        seeded per epoch): which examples lose their text / their audio (``train.text_dropout``,
        ``train.audio_dropout``; never both), and which speech each reads: its clean features (0)
        or augmented copy k (the same on both cr paths)."""
        tc, variants = self.tc, len(self.data.audio_variants)
        reads = getattr(getattr(self.model, "fusion", self.model), "modalities", ("audio", "text"))
        drop = None
        if (tc.text_dropout or tc.audio_dropout) and len(reads) > 1:  # a single-modal model keeps its one input
            text = torch.rand(n, generator=generator) < tc.text_dropout
            audio = (torch.rand(n, generator=generator) < tc.audio_dropout) & ~text
            drop = text, audio
        copy = torch.randint(0, 1 + variants, (n,), generator=generator).tolist() if variants else None
        return drop, copy

    def order(self, epoch: int) -> list[str]:
        """The epoch's shuffle of the training clips (seed and epoch only: resumable)."""
        return [self.fold.train[i] for i in _rng_for(self.tc.seed, epoch).permutation(len(self.fold.train))]

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        from tqdm.auto import tqdm

        tc, fold = self.tc, self.fold
        order = self.order(epoch)
        torch.manual_seed(epoch_seed(tc.seed, epoch, self.rank))  # dropout, per epoch and rank
        self.net.train()
        for group in self.optim.param_groups:
            group["lr"] = lr_at(tc, epoch)
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
        steps = (len(fold.train) + tc.batch_size - 1) // tc.batch_size
        bar = tqdm(total=steps, desc=f"{fold.name} epoch {epoch + 1}/{tc.epochs}",
                   disable=not progress or self.rank != 0, leave=False, unit="step")
        for s in range(steps):
            step_ids = order[s * tc.batch_size:(s + 1) * tc.batch_size]
            self.optim.zero_grad(set_to_none=True)
            for key, v in accumulate_step(self.net, self.micro_loss, step_ids, self.rank, self.world,
                                          tc.grad_accum).items():
                sums[key] = sums.get(key, 0.0) + v
            self.optim.step()
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] * self.world / max(1, (s + 1) * tc.batch_size):.3f}")
        bar.close()
        return all_reduce_sums(sums) if self.world > 1 else sums

    def evaluate(self, ids: Sequence[str], source: str) -> tuple[np.ndarray, dict[str, float]]:
        if not ids:  # split.valid=none: nothing to score
            return np.zeros((0, len(self.plan.labels))), {}
        probs = predict_proba(self.model, self.data, ids, source, self.tc.batch_size, self.device, self.precision)
        labels = self.plan.labels
        return probs, score([self.data.labels[u] for u in ids], [labels[i] for i in probs.argmax(1)], labels, probs)

    def validate(self, epoch: int, sums: dict[str, float], t0: float) -> dict:
        """Score the epoch on validation, keep the best weights, record the epoch's history."""
        _, valid = self.evaluate(self.fold.valid, self.plan.valid_source)
        best = self.best
        if not valid:  # no validation set: the latest epoch is the one kept
            improved = True
            self.best = {"f1": float("nan"), "epoch": epoch + 1, "state": _state_copy(self.model), "bad": 0}
        else:
            # Small validation sets tie often: among equal F1, the lower validation NLL wins.
            nll = valid.get("nll", float("inf"))
            improved = valid["weighted_f1"] > best["f1"] or (
                valid["weighted_f1"] == best["f1"] and nll < best.get("nll", float("inf")))
            if improved:
                self.best = {"f1": valid["weighted_f1"], "nll": nll, "epoch": epoch + 1,
                             "state": _state_copy(self.model), "bad": 0}
            else:
                best["bad"] += 1
        info = self.record(epoch, sums, time.perf_counter() - t0, valid)
        scored = (f"valid weighted F1 {info['valid_weighted_f1']:.4f}{' (best)' if improved else ''}" if valid
                  else "no validation set, the last epoch is kept")
        log.info("%s epoch %d/%d: train loss %.4f, %s (%.1f s)", self.fold.name, epoch + 1, self.tc.epochs,
                 info["train_loss"], scored, info["seconds"])
        return info

    def record(self, epoch: int, sums: dict[str, float], seconds: float, valid: dict) -> dict:
        """The epoch's line of the bundle's history (losses per training example)."""
        n = max(1, len(self.fold.train))
        info = {"epoch": epoch + 1, "train_loss": sums["loss"] / n, "train_ce": sums["ce"] / n,
                "valid_weighted_f1": valid.get("weighted_f1", float("nan")),
                "valid_accuracy": valid.get("accuracy", float("nan")),
                "seconds": round(seconds, 3)}
        if self.plan.mode == "cr":
            info["train_kl"] = sums["kl"] / n
        self.history.append(info)
        return info

    def meta(self, encoders: dict | None) -> dict[str, Any]:
        """What the bundle records besides weights and results (:mod:`koemo.training.bundle`)."""
        recipe, plan, fold = self.recipe, self.plan, self.fold
        fusion = getattr(self.model, "fusion", self.model)
        return {
            "koemo_version": _version(),
            **bundles.describe_model(recipe.model, fusion),
            "labels": plan.labels,
            "text_train": self.tc.text,
            "valid_source": plan.valid_source,
            "cr": vars(plan.variant) if plan.variant else None,
            "encoders": encoders or {},
            "end_to_end": self.end_to_end,
            "split": {"protocol": recipe.split.protocol, "folds": recipe.split.folds, "seed": recipe.split.seed,
                      "fold": fold.name, "n_train": len(fold.train), "n_valid": len(fold.valid),
                      "n_test": len(fold.test)},
            "seed": self.tc.seed,
            "world_size": self.world,
            "data_hash": plan.data_hash,
            "fingerprint": plan.fingerprint,
        }

    def checkpoint(self, epoch: int, meta: dict) -> None:
        """Every ``train.checkpoint_every`` epochs (and the last): the bundle with a resume state."""
        every = self.tc.checkpoint_every
        if self.out is None or self.rank != 0 or not every or not ((epoch + 1) % every == 0 or epoch + 1 == self.tc.epochs):
            return
        best = self.best
        resume_state = {"epoch": epoch + 1, "model": _state_copy(self.model), "optim": self.optim.state_dict(),
                        "history": self.history, "best": best, "fingerprint": self.plan.fingerprint}
        bundles.write_bundle(self.out, {**meta, "complete": False, "best_epoch": best["epoch"],
                                        "epochs_done": epoch + 1, "history": self.history,
                                        "metrics": {"valid": {"weighted_f1": best["f1"]}}},
                             self.plan.config, best["state"], resume_state, inputs=self.input_arrays)

    # ---- 5. finish
    def finish(self, meta: dict) -> TrainResult:
        """Best weights back, tested on every test source, the complete bundle written."""
        if self.best["state"] is None:  # epochs == 0
            self.best = {"f1": float("nan"), "epoch": 0, "state": _state_copy(self.model), "bad": 0}
        best, plan, fold, data = self.best, self.plan, self.fold, self.data
        self.model.load_state_dict(best["state"])
        self.model.eval()
        _, valid = self.evaluate(fold.valid, plan.valid_source)
        test: dict[str, dict[str, float]] = {}
        predictions: dict[str, list] = {}
        for source in plan.test_sources:
            probs, test[source] = self.evaluate(fold.test, source)
            predictions[source] = [
                Prediction(u, data.labels[u], plan.labels[int(probs[i].argmax())], probs[i].tolist(),
                           self.recipe.split.seed, fold.name, {"source": source, "text_train": self.tc.text})
                for i, u in enumerate(fold.test)
            ]
        meta = {**meta, "complete": True, "best_epoch": best["epoch"], "epochs_done": len(self.history),
                "history": self.history, "metrics": {"valid": valid, "test": test}}
        if self.out is not None and self.rank == 0:
            bundles.write_bundle(self.out, meta, plan.config, best["state"], None, predictions,
                                 inputs=self.input_arrays)
        return TrainResult(self.out, best["epoch"], len(self.history), plan.valid_source, valid, test,
                           self.history, self.model, meta, predictions)


def train_fold(
    recipe: Recipe,
    fold: Fold,
    data: FeatureData,
    *,
    model: nn.Module | None = None,
    out_dir: str | Path | None = None,
    encoders: dict[str, Any] | None = None,
    callbacks: Sequence[EpochCallback] = (),
    progress: bool = True,
    resume: bool = True,
    fold_plan: FoldPlan | None = None,
    input_arrays: dict[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train one fold; write the bundle to ``out_dir`` (if given) every ``train.checkpoint_every``
    epochs (weights + optimiser state, so a killed run resumes there) and when done.

    ``model`` defaults to the recipe's fusion model built for the data's dimensions; pass an
    encoders+fusion module (:mod:`koemo.training.finetune`) to train end to end, with ``data``
    holding the encoders' raw inputs. ``fold_plan``: :func:`plan_fold`'s result, if the caller
    has it. ``callbacks(epoch, info)`` run after each epoch's bundle is written (``epoch``
    1-based); an exception there stops training as a kill would. ``input_arrays``: what the
    input stage needs in service (the speech normaliser's statistics), written into the bundle.
    """
    plan = fold_plan or plan_fold(recipe, fold, data, stack=False)
    if plan.stacked:  # planned for a stack, trained alone: its fingerprint says so
        plan = plan_fold(recipe, fold, data, stack=False)
    check_settings(recipe.train)
    run = _FoldRun(recipe, fold, data, plan, model, Path(out_dir) if out_dir else None)
    run.input_arrays = input_arrays
    if run.out is not None and resume:
        run.resume()
    run.fit_inputs()
    run.wrap_parallel()
    meta = run.meta(encoders)
    tc = recipe.train
    for epoch in range(run.start_epoch, tc.epochs):
        if tc.early_stopping and run.best["bad"] >= tc.early_stopping:
            log.info("early stopping: no better validation F1 for %d epochs", run.best["bad"])
            break
        t0 = time.perf_counter()
        sums = run.train_epoch(epoch, progress)
        info = run.validate(epoch, sums, t0)
        run.checkpoint(epoch, meta)
        if run.world > 1:
            barrier()
        for cb in callbacks:
            cb(epoch + 1, info)
    return run.finish(meta)


def _version() -> str:
    from koemo import __version__

    return __version__
