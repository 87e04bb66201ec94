"""The trainer: one fold of one recipe, from feature mappings to a model bundle.

Entry point :func:`train_fold` (the CLI's ``koemo train`` calls it once per fold). What it does:

- text sources: ``gold`` (golden path), ``asr:B`` (STT path) or ``cr:B`` (both paths, loss
  ``CE + lambda * KL``, :mod:`koemo.training.losses`); validation, and so the checkpoint choice,
  uses the text the model will meet in service: the STT path for ``asr:``/``cr:``, gold for ``gold``;
- Adam, ``train.batch_size`` examples per optimiser step (the effective batch), split into
  ``train.grad_accum`` micro-batches; losses are summed and divided by the step's size, so
  accumulation and data-parallel shards give the full-batch mean gradient;
- best-on-validation (weighted F1) weights, optional early stopping (``train.early_stopping``
  epochs of patience), optional balanced class weights;
- ``train.seed`` seeds the initialisation, the per-epoch shuffle and dropout (the split has its
  own ``split.seed``; ``koemo train --seed S`` sets both);
- multi-process data parallel: started by ``torchrun``, each process builds the same model
  (``DistributedDataParallel`` broadcasts rank 0's weights), takes every ``world_size``-th example
  of each step and DDP averages gradients; rank 0 writes the bundle;
- after every epoch the bundle is rewritten atomically with a resume state; a run killed in
  epoch k restarts at epoch k from the state of epoch k-1 and ends bit-for-bit where an
  uninterrupted run ends (the shuffle and dropout seeds depend only on seed and epoch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from koemo.config import Recipe, to_dict
from koemo.data.labels import resolve_label_set
from koemo.data.splits import Fold
from koemo.errors import KoemoError
from koemo.training.bundle import read_meta, read_resume_state, write_bundle
from koemo.training.data import FeatureData, parse_text_train
from koemo.training.losses import CRVariant, ce_sum, class_weights, cr_sum

log = logging.getLogger("koemo")

EpochCallback = Callable[[int, dict], None]


# ---------------------------------------------------------------------------------------------
# distributed


def to_device(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str = "cpu") -> tuple[int, int, str]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1).

    gloo on CPU, nccl on CUDA (each process on its ``LOCAL_RANK`` GPU). Returns (rank, world, device).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
    rank, world = dist_info()
    return rank, world, device


# ---------------------------------------------------------------------------------------------
# metrics


def score(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], probs=None) -> dict[str, float]:
    """Weighted F1 and friends, from koemo.evaluation.metrics."""
    from koemo.evaluation.metrics import compute_metrics

    return compute_metrics(list(y_true), list(y_pred), list(labels), probs).scalars()


PRECISIONS = ("fp32", "bf16")


def autocast(device: str, precision: str = "fp32"):
    """The context the forward passes run in: plain fp32, or bfloat16 autocast (``train.precision``)."""
    if precision not in PRECISIONS:
        raise KoemoError(f"train.precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def predict_proba(model: nn.Module, data: FeatureData, ids: Sequence[str], source: str,
                  batch_size: int = 64, device: str = "cpu", precision: str = "fp32") -> np.ndarray:
    """Class probabilities ``[N, C]`` for ``ids`` read with text ``source`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(ids), batch_size):
        b = to_device(data.batch([(u, source) for u in ids[i:i + batch_size]]), device)
        with autocast(device, precision):
            logits = model(**b)
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(data.label_list)))


# ---------------------------------------------------------------------------------------------
# result


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


def accumulate_step(net: nn.Module, loss_fn: Callable[[Sequence[str]], tuple[torch.Tensor, dict]],
                    step_ids: Sequence[str], rank: int = 0, world: int = 1, grad_accum: int = 1) -> dict[str, float]:
    """Backpropagate one optimiser step's worth of examples into ``.grad``.

    This process takes every ``world``-th example of ``step_ids`` and splits its share into
    ``grad_accum`` micro-batches. ``loss_fn(ids)`` returns a loss *summed* over ``ids``; each is
    scaled by ``world / len(step_ids)``, so after DDP averages over processes the gradient is the
    mean over the whole step. A process whose share runs out still does its ``grad_accum``
    backward passes (a zero-weighted stand-in), as DDP needs the same number everywhere.
    Gradients are synchronised only on the last micro-batch (``no_sync`` before). Returns the
    summed loss parts of this process's examples.
    """
    shard = list(step_ids[rank::world])
    micro = [list(m) for m in np.array_split(np.array(shard, dtype=object), grad_accum)]
    scale = world / len(step_ids)
    sums: dict[str, float] = {"loss": 0.0}
    for k, mb in enumerate(micro):
        factor = scale
        if not mb:
            mb, factor = list(step_ids[:1]), 0.0
        sync = world == 1 or k == len(micro) - 1
        with contextlib.nullcontext() if sync else net.no_sync():
            loss, parts = loss_fn(mb)
            (loss * factor).backward()
        if factor:
            sums["loss"] += float(loss.detach())
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v
    return sums


def _fingerprint(cfg: dict, fold: Fold, data_hash: str, world: int) -> str:
    cfg = json.loads(json.dumps(cfg))
    for key in ("epochs", "early_stopping", "device", "checkpoint_every"):  # may change between a run and its resume
        cfg.get("train", {}).pop(key, None)
    if cfg.get("train", {}).get("precision") == "fp32":  # the default: fingerprints from before the field stay valid
        cfg["train"].pop("precision")
    # The evaluation grid does not change how a fold trains (what it is tested on is in the data
    # hash): adding a row to eval.table3 must not retrain every other fold of koemo reproduce.
    cfg.pop("eval", None)
    doc = {"config": cfg, "fold": [fold.name, fold.train, fold.valid, fold.test], "data": data_hash,
           "world": world}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _rng_for(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


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


def plan_fold(recipe: Recipe, fold: Fold, data: FeatureData) -> FoldPlan:
    """Check the data covers the fold (clear errors, with the utterance id) and fingerprint it."""
    tc = recipe.train
    mode, stt = parse_text_train(tc.text)
    variant = CRVariant(tc.cr_lambda, tc.cr_ce_path, tc.cr_kl, tc.cr_detach_target) if mode == "cr" else None
    train_sources = {"gold": ["gold"], "asr": [stt], "cr": ["gold", stt]}[mode]
    valid_source = "gold" if mode == "gold" else stt
    labels = list(resolve_label_set(recipe.data.label_set))
    if list(data.label_list) != labels:
        raise KoemoError(f"data labels {data.label_list} differ from the recipe's {labels}")
    data.check(fold.train, train_sources, "training")
    data.check(fold.valid, [valid_source], "validation")
    data.check(fold.test, [valid_source], "test")
    test_sources = [valid_source] + sorted(
        s for s in data.text if s != valid_source and all(u in data.text[s] for u in fold.test)
    )
    for s in test_sources[1:]:
        data.check(fold.test, [s], "test")
    data_hash = data.data_hash([(fold.train, train_sources), (fold.valid, [valid_source]),
                                (fold.test, test_sources)])
    cfg_dict = to_dict(recipe)
    fingerprint = _fingerprint(cfg_dict, fold, data_hash, dist_info()[1])
    return FoldPlan(mode, stt, variant, labels, train_sources, valid_source, test_sources, cfg_dict,
                    data_hash, fingerprint)


def bundle_done(out: str | Path, fingerprint: str) -> bool:
    """Does ``out`` hold a complete bundle of exactly this run (same fingerprint)?"""
    out = Path(out)
    if not (out / "bundle.json").exists():
        return False
    try:
        meta = read_meta(out)
    except KoemoError:
        return False
    return bool(meta.get("complete")) and meta.get("fingerprint") == fingerprint


# ---------------------------------------------------------------------------------------------
# training


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
) -> TrainResult:
    """Train one fold; write the bundle to ``out_dir`` (if given) every ``train.checkpoint_every``
    epochs (weights + optimiser state, so a killed run resumes there) and when done.

    ``model`` defaults to the recipe's fusion model built for the data's dimensions; pass an
    encoders+fusion module (:mod:`koemo.training.finetune`) to train end to end, with ``data``
    holding the encoders' raw inputs. ``fold_plan``: :func:`plan_fold`'s result, if the caller has it. ``callbacks(epoch, info)`` run after each epoch's bundle is
    written (``epoch`` 1-based); an exception there stops training as a kill would.
    """
    from tqdm.auto import tqdm

    from koemo.fusion import build_fusion

    tc, mc = recipe.train, recipe.model
    plan = fold_plan or plan_fold(recipe, fold, data)
    mode, stt, variant = plan.mode, plan.stt, plan.variant
    train_sources, valid_source, test_sources = plan.train_sources, plan.valid_source, plan.test_sources
    if tc.batch_size < 1 or tc.grad_accum < 1 or tc.epochs < 0 or tc.checkpoint_every < 0:
        raise KoemoError("train.batch_size and train.grad_accum must be >= 1, train.epochs and "
                         "train.checkpoint_every >= 0")
    device, precision = tc.device, tc.precision
    autocast(device, precision)  # refuses an unknown precision before any work
    labels = plan.labels
    rank, world = dist_info()
    data_hash, cfg_dict, fingerprint = plan.data_hash, plan.config, plan.fingerprint

    torch.manual_seed(tc.seed)
    end_to_end = model is not None and not hasattr(model, "embed")
    if model is None:
        a_dim, t_dim = data.dims(train_sources[0])
        model = build_fusion(mc.fusion, a_dim, t_dim, len(labels), hidden=mc.hidden, heads=mc.heads,
                             layers=mc.layers, dropout=mc.dropout, audio_pool=mc.audio_pool)
    model.to(device)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                             weight_decay=tc.weight_decay)
    y_train = data.y(fold.train)
    cw = class_weights(y_train.tolist(), len(labels)).to(device) if tc.class_weights else None

    # ---- resume
    out = Path(out_dir) if out_dir else None
    start_epoch, history, best = 0, [], {"f1": -1.0, "epoch": 0, "state": None, "bad": 0}
    state = read_resume_state(out) if (out is not None and resume) else None
    if out is not None and resume and state is None and (out / "bundle.json").exists():
        meta = read_meta(out)
        if meta.get("complete") and meta.get("fingerprint") == fingerprint:
            log.info("%s: already trained (complete bundle); evaluating it", out)
            from koemo.training.bundle import load_weights

            model.load_state_dict(load_weights(out / "model.safetensors"))
            start_epoch = tc.epochs
            history = meta.get("history", [])
            best = {"f1": meta["metrics"]["valid"]["weighted_f1"], "epoch": meta["best_epoch"],
                    "state": _state_copy(model), "bad": 0}
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise KoemoError(f"{out}: holds a different run (config, fold or data changed); "
                             "use another --out or start over with --no-resume")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        log.info("%s: resuming after epoch %d of %d", out, start_epoch, tc.epochs)

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)

    def micro_loss(ids: Sequence[str]) -> tuple[torch.Tensor, dict]:
        y = data.y(ids).to(device)

        def forward(pairs):  # under train.precision; the losses see fp32 logits
            with autocast(device, precision):
                return net(**to_device(data.batch(pairs), device)).float()

        if mode == "cr":
            logits = forward([(u, "gold") for u in ids] + [(u, stt) for u in ids])
            return cr_sum(logits[: len(ids)], logits[len(ids):], y, variant, cw)
        loss = ce_sum(forward([(u, train_sources[0]) for u in ids]), y, cw)
        return loss, {"ce": float(loss.detach())}

    meta_base = {
        "koemo_version": _version(),
        "model": {"fusion": mc.fusion, "hidden": mc.hidden, "heads": mc.heads, "layers": mc.layers,
                  "dropout": mc.dropout, "audio_pool": mc.audio_pool},
        "audio_dim": getattr(_fusion_of(model), "audio_dim", None),
        "text_dim": getattr(_fusion_of(model), "text_dim", None),
        "labels": labels,
        "text_train": tc.text,
        "valid_source": valid_source,
        "cr": vars(variant) if variant else None,
        "encoders": encoders or {},
        "end_to_end": end_to_end,
        "split": {"protocol": recipe.split.protocol, "folds": recipe.split.folds, "seed": recipe.split.seed,
                  "fold": fold.name, "n_train": len(fold.train), "n_valid": len(fold.valid),
                  "n_test": len(fold.test)},
        "seed": tc.seed,
        "world_size": world,
        "data_hash": data_hash,
        "fingerprint": fingerprint,
    }

    steps_per_epoch = (len(fold.train) + tc.batch_size - 1) // tc.batch_size
    epoch = start_epoch
    for epoch in range(start_epoch, tc.epochs):
        if tc.early_stopping and best["bad"] >= tc.early_stopping:
            log.info("early stopping: no better validation F1 for %d epochs", best["bad"])
            break
        t0 = time.perf_counter()
        order = [fold.train[i] for i in _rng_for(tc.seed, epoch).permutation(len(fold.train))]
        torch.manual_seed(tc.seed * 1_000_003 + epoch * 7919 + rank)  # dropout, per epoch and rank
        net.train()
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
        bar = tqdm(total=steps_per_epoch, desc=f"{fold.name} epoch {epoch + 1}/{tc.epochs}",
                   disable=not progress or rank != 0, leave=False, unit="step")
        for s in range(steps_per_epoch):
            step_ids = order[s * tc.batch_size:(s + 1) * tc.batch_size]
            optim.zero_grad(set_to_none=True)
            step_sums = accumulate_step(net, micro_loss, step_ids, rank, world, tc.grad_accum)
            for key, v in step_sums.items():
                sums[key] = sums.get(key, 0.0) + v
            optim.step()
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] * world / max(1, (s + 1) * tc.batch_size):.3f}")
        bar.close()
        probs = predict_proba(model, data, fold.valid, valid_source, tc.batch_size, device, precision)
        pred = [labels[i] for i in probs.argmax(1)]
        valid = score([data.labels[u] for u in fold.valid], pred, labels, probs)
        # Small validation sets tie often: among equal F1, the lower validation NLL wins.
        nll = valid.get("nll", float("inf"))
        improved = valid["weighted_f1"] > best["f1"] or (
            valid["weighted_f1"] == best["f1"] and nll < best.get("nll", float("inf")))
        if improved:
            best = {"f1": valid["weighted_f1"], "nll": nll, "epoch": epoch + 1,
                    "state": _state_copy(model), "bad": 0}
        else:
            best["bad"] += 1
        keys = sorted(sums)
        if world > 1:  # every process saw its own share of the examples: add them up
            import torch.distributed as dist

            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
            dist.all_reduce(t)
            sums = dict(zip(keys, t.tolist()))
        n = max(1, len(fold.train))
        info = {"epoch": epoch + 1, "train_loss": sums["loss"] / n,
                "train_ce": sums["ce"] / n, "valid_weighted_f1": valid["weighted_f1"],
                "valid_accuracy": valid["accuracy"], "seconds": round(time.perf_counter() - t0, 3)}
        if mode == "cr":
            info["train_kl"] = sums["kl"] / n
        history.append(info)
        log.info("%s epoch %d/%d: train loss %.4f, valid weighted F1 %.4f%s (%.1f s)", fold.name, epoch + 1,
                 tc.epochs, info["train_loss"], valid["weighted_f1"], " (best)" if improved else "",
                 info["seconds"])
        every = tc.checkpoint_every
        if out is not None and rank == 0 and every and ((epoch + 1) % every == 0 or epoch + 1 == tc.epochs):
            resume_state = {"epoch": epoch + 1, "model": _state_copy(model), "optim": optim.state_dict(),
                            "history": history, "best": best, "fingerprint": fingerprint}
            write_bundle(out, {**meta_base, "complete": False, "best_epoch": best["epoch"],
                               "epochs_done": epoch + 1, "history": history,
                               "metrics": {"valid": {"weighted_f1": best["f1"]}}},
                         cfg_dict, best["state"], resume_state)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        for cb in callbacks:
            cb(epoch + 1, info)

    # ---- best weights, final evaluation, final bundle
    if best["state"] is None:  # epochs == 0
        best = {"f1": float("nan"), "epoch": 0, "state": _state_copy(model), "bad": 0}
    model.load_state_dict(best["state"])
    model.eval()
    valid_probs = predict_proba(model, data, fold.valid, valid_source, tc.batch_size, device, precision)
    valid = score([data.labels[u] for u in fold.valid], [labels[i] for i in valid_probs.argmax(1)],
                  labels, valid_probs)
    test: dict[str, dict[str, float]] = {}
    predictions: dict[str, list] = {}
    from koemo.evaluation.metrics import Prediction

    for source in test_sources:
        probs = predict_proba(model, data, fold.test, source, tc.batch_size, device, precision)
        pred = [labels[i] for i in probs.argmax(1)]
        test[source] = score([data.labels[u] for u in fold.test], pred, labels, probs)
        predictions[source] = [
            Prediction(u, data.labels[u], p, probs[i].tolist(), recipe.split.seed, fold.name,
                       {"source": source, "text_train": tc.text})
            for i, (u, p) in enumerate(zip(fold.test, pred))
        ]
    meta = {**meta_base, "complete": True, "best_epoch": best["epoch"], "epochs_done": len(history),
            "history": history, "metrics": {"valid": valid, "test": test}}
    if out is not None and rank == 0:
        write_bundle(out, meta, cfg_dict, best["state"], None, predictions)
    return TrainResult(out, best["epoch"], len(history), valid_source, valid, test, history, model, meta,
                       predictions)


def _fusion_of(model: nn.Module) -> nn.Module:
    return getattr(model, "fusion", model)


def _version() -> str:
    from koemo import __version__

    return __version__
