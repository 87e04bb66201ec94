"""The pieces of a training step the trainer and its callers share: the forward pass's precision,
the learning rate of an epoch, class probabilities in eval mode, one optimiser step's gradient
over micro-batches and processes, and blanking a modality (modality dropout)."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from koemo.errors import KoemoError
from koemo.fusion.base import reads_text_means, speech_mean_window
from koemo.metrics import compute_metrics
from koemo.training.data import FeatureData
from koemo.training.distributed import to_device


def score(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], probs=None) -> dict[str, float]:
    """Weighted F1 and friends (:mod:`koemo.metrics`)."""
    return compute_metrics(list(y_true), list(y_pred), list(labels), probs).scalars()


PRECISIONS = ("fp32", "bf16")

#: train.lr_schedule's choices
LR_SCHEDULES = ("constant", "cosine")


def lr_at(tc, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under ``train.lr_schedule``: one-fold and stacked
    training set it at the start of every epoch, so a resumed run continues the same curve."""
    if tc.lr_schedule == "cosine" and tc.epochs > 0:
        return tc.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / tc.epochs))
    return tc.lr


def check_settings(tc) -> None:
    """Refuse a ``train`` section no trainer can run, before any work."""
    if tc.batch_size < 1 or tc.grad_accum < 1 or tc.epochs < 0 or tc.checkpoint_every < 0:
        raise KoemoError("train.batch_size and train.grad_accum must be >= 1, train.epochs and "
                         "train.checkpoint_every >= 0")
    if tc.lr_schedule not in LR_SCHEDULES:
        raise KoemoError(f"train.lr_schedule={tc.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    autocast(tc.device, tc.precision)  # refuses an unknown precision


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
    means, speech = reads_text_means(model), speech_mean_window(model)
    for i in range(0, len(ids), batch_size):
        b = to_device(data.batch([(u, source) for u in ids[i:i + batch_size]], text_means=means,
                                 speech_means=speech), device)
        with autocast(device, precision):
            logits = model(**b)
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(data.label_list)))


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


def blank_modalities(batch: dict, text: torch.Tensor, audio: torch.Tensor) -> None:
    """Blank the rows ``text`` (``audio``) of a padded batch in place: what an empty transcript
    (silence) gives, one zero vector."""
    for rows, key in ((text, "text"), (audio, "audio")):
        if rows.any() and isinstance(batch[key], torch.Tensor):
            batch[key][rows] = 0
            mask = batch[f"{key}_mask"]
            mask[rows] = False
            mask[rows, 0] = True
