"""Folds trained together: the folds of a grid row as one stacked model.

A fold of a pooled head is ~200 clips and a few thousand weights; trained alone, each optimiser
step is a dozen small tensor operations and Python between them (~8 ms on this project's CPU for
~0.1 ms of arithmetic). Stacked, every fold keeps its own weights, optimiser state, shuffle,
batches and random draws, and one step advances all of them:

- the folds' models are built and standardised one by one, exactly as :func:`train_fold` builds
  them (:class:`~koemo.training.trainer._FoldRun`), then their weights are stacked
  (``torch.func.stack_module_state``) and the forward pass is ``vmap``-ed over the fold axis;
- step ``s`` takes batch ``s`` of each fold's own shuffle (the trainer's: seed and epoch), padded
  to the longest with zero-weight rows; each fold's loss is its batch mean, so the sum over folds
  gives each fold's weights its own gradient;
- :class:`StackedAdam` is ``torch.optim.Adam`` (L2 weight decay) with one step count per fold: a
  fold whose shuffle has no batch ``s`` (fewer clips) is not updated, as it would not be alone;
- modality dropout and augmented-copy choices come from a generator per fold seeded as the
  trainer seeds an epoch, so a head without dropout layers (``linear``) trains to the weights
  the one-fold trainer gives, within float rounding (``tests/training/test_stacked.py``); dropout
  layers draw from one generator for the stack (results equal within seed noise);
- a fold with a validation set is scored after every epoch by the trainer's own
  :meth:`~koemo.training.trainer._FoldRun.validate` (its weights unstacked into its model), which
  keeps its best epoch; under ``train.early_stopping`` a fold that stops gets no more batches.

Each fold's bundle is written by the trainer's own finish step (test predictions, metrics). A
stack has no mid-run checkpoint: a killed stack trains again (seconds), finished bundles stay.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from koemo.config import Recipe
from koemo.data.splits import Fold
from koemo.training.data import AbsentModality, FeatureData
from koemo.training.distributed import to_device
from koemo.training.losses import ce_per_example, cr_per_example
from koemo.training.steps import autocast, blank_modalities, check_settings, lr_at
from koemo.training.trainer import FoldPlan, TrainResult, _FoldRun, _state_copy, epoch_seed

log = logging.getLogger("koemo")

#: bytes of input one step of a stack may hold: more folds are split into several (balanced)
#: stacks. Measured (benchmarks/bench_folds.py, linear head, 2 CPU cores): 12 folds a stack
#: (24 MiB a step) 2.3 ms per fold-step, 25 folds (50 MiB) 6.1 ms, one fold alone 4.6 ms; past
#: glibc's largest heap block (32 MiB, koemo/allocator.py) every step maps fresh memory.
STACK_BUDGET = 24 << 20


class StackedAdam:
    """``torch.optim.Adam`` (``weight_decay`` added to the gradient, as Adam's L2 penalty) over
    parameters with a leading fold axis, with one step count per fold: :meth:`step` updates only
    the ``active`` folds (weights, moments and bias corrections of the others stay as they were)."""

    def __init__(self, params: Sequence[torch.Tensor], folds: int, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros(folds, dtype=torch.float64)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """Adam's update in place (no full-size copies beyond the denominator: a stack's weights
        are tens of megabytes); the folds not ``active`` are put back as they were."""
        b1, b2 = self.betas
        self.steps += active.double()
        t = self.steps.clamp_min(1.0)
        step_size = (self.lr / (1 - b1 ** t)).float()
        bc2_sqrt = (1 - b2 ** t).sqrt().float()
        resting = (~active).nonzero().flatten()
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            kept = [(x, x[resting].clone()) for x in (p, m, v)] if len(resting) else []
            g = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt.to(p.device).view(shape)).add_(self.eps)
            p.add_(torch.div(m, denom, out=denom).mul_(-step_size.to(p.device).view(shape)))
            for x, saved in kept:
                x[resting] = saved


class _Paths(torch.nn.Module):
    """A head's ``forward_paths`` as a module's forward, for ``functional_call``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, audio, audio_mask, texts, text_masks):
        return self.model.forward_paths(audio, audio_mask, texts, text_masks)


def stack_sizes(data: FeatureData, plan: FoldPlan, batch_size: int, folds: int,
                text_means: bool = False, shared_speech: bool = False, speech_means: bool = False) -> list[int]:
    """How many folds each stack takes: as few stacks as keep a step's input within
    :data:`STACK_BUDGET` bytes, of balanced sizes (``text_means``: one text vector a clip;
    ``shared_speech``: a clip's speech batched once for all its text paths; ``speech_means``:
    one speech vector a clip)."""
    text_dim = data.dims(plan.train_sources[0])[1]

    def longest(table, one_row: bool = False) -> int:
        if isinstance(table, AbsentModality) or not len(table):
            return 1
        return max((1 if one_row else int(np.asarray(a).shape[0])) * int(np.prod(np.asarray(a).shape[1:]))
                   for a in table.values())

    sources = plan.train_sources  # the rows of a step: gold, the STT text, or both (cr)
    text = text_dim if text_means else max(longest(data.text[s]) for s in sources)
    speech_rows = 1 if shared_speech else len(sources)
    clip = 4 * (longest(data.audio, speech_means) * speech_rows + text * len(sources))  # float32
    fit = max(1, STACK_BUDGET // max(1, clip * batch_size))
    stacks = -(-folds // fit)
    return [folds // stacks + (i < folds % stacks) for i in range(stacks)]


class _Stack:
    """The stacked weights, optimiser and batches of a group of folds' runs."""

    def __init__(self, runs: Sequence[_FoldRun]):
        from torch.func import functional_call, stack_module_state, vmap

        self.runs = list(runs)
        first = self.runs[0]
        self.tc, self.plan, self.data, self.device = first.tc, first.plan, first.data, first.device
        self.params, self.buffers = stack_module_state([r.model for r in self.runs])
        base = copy.deepcopy(first.model).to("meta")
        self.base = base

        def call(params, buffers, audio, audio_mask, text, text_mask):
            return functional_call(base, (params, buffers), (audio, audio_mask, text, text_mask))

        self.forward = vmap(call, randomness="different")
        #: a head whose speech half is computed once for all text paths (``forward_paths``: CR's
        #: golden and STT rows share the clip), when the plan has several paths; such a head
        #: reads one mean text vector a clip (``text_mean_only``), so the paths' texts stack
        self.paths = None
        if hasattr(base, "forward_paths") and len(self.plan.train_sources) > 1:
            paths = _Paths(base)

            def call_paths(params, buffers, audio, audio_mask, texts, text_masks):
                state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
                return functional_call(paths, state, (audio, audio_mask, texts, text_masks))

            self.paths = vmap(call_paths, randomness="different")
        trained = [k for k, p in self.params.items() if p.requires_grad]
        self.optim = StackedAdam([self.params[k] for k in trained], len(self.runs), self.tc.lr,
                                 self.tc.weight_decay)
        self.class_weights = (torch.stack([r.cw for r in self.runs]).to(self.device)
                              if self.runs[0].cw is not None else None)

    def train_epoch(self, epoch: int, stopped: Sequence[bool] = ()) -> list[dict[str, float]]:
        """One epoch of every fold; a ``stopped`` fold (early stopping) has no batches, so it is
        not updated, as the one-fold trainer would not train it any more."""
        tc, runs = self.tc, self.runs
        orders = [[] if f < len(stopped) and stopped[f] else r.order(epoch) for f, r in enumerate(runs)]
        seed = epoch_seed(tc.seed, epoch)
        torch.manual_seed(seed)  # dropout layers: one generator for the stack
        gens = [torch.Generator().manual_seed(seed) for _ in runs]  # the trainer's draws, per fold
        self.base.train()
        self.optim.lr = lr_at(tc, epoch)
        sums = [{"loss": 0.0, "ce": 0.0, "kl": 0.0} for _ in runs]
        steps = max((len(o) + tc.batch_size - 1) // tc.batch_size for o in orders)
        for s in range(steps):
            ids = [o[s * tc.batch_size:(s + 1) * tc.batch_size] for o in orders]
            self.optim.zero_grad()
            parts = self.step_loss(ids, gens)
            active = torch.tensor([bool(i) for i in ids])
            self.optim.step(active)
            for f, part in enumerate(parts):
                for key, v in part.items():
                    sums[f][key] += v
        return sums

    def step_loss(self, ids: Sequence[Sequence[str]], gens: Sequence[torch.Generator]) -> list[dict[str, float]]:
        """Backpropagate one step of every fold (fold f's batch ``ids[f]``, its mean loss)."""
        runs, data, plan = self.runs, self.data, self.plan
        n_max, folds, paths = max(len(i) for i in ids), len(ids), len(plan.train_sources)
        rows, copies, text_drop, audio_drop, weight, y = [], [], [], [], [], []  # each clip once, fold by fold
        for f, fold_ids in enumerate(ids):
            n = len(fold_ids)
            drop, copy_ = runs[f].draws(n, gens[f]) if n else (None, None)
            fold_rows = list(fold_ids) + [fold_ids[0] if n else runs[f].fold.train[0]] * (n_max - n)
            pad = [False] * (n_max - n)
            rows += fold_rows
            copies += (copy_ or [0] * n) + [0] * (n_max - n)
            text_drop += (drop[0].tolist() if drop else [False] * n) + pad
            audio_drop += (drop[1].tolist() if drop else [False] * n) + pad
            weight.append([1.0 / n] * n + [0.0] * (n_max - n) if n else [0.0] * n_max)
            y.append(data.y(fold_rows))
        if self.paths is not None:  # the clip's speech once, beside each path's text
            audio, audio_mask = data.speech_batch(rows, copies if data.audio_variants else None, runs[0].speech_means)
            texts = [data.text_batch([(u, s) for u in rows], runs[0].text_means) for s in plan.train_sources]
            if any(text_drop) or any(audio_drop):
                for k, t in enumerate(texts):
                    blank_modalities({"audio": audio, "audio_mask": audio_mask, **t}, torch.tensor(text_drop),
                                     torch.tensor(audio_drop if k == 0 else [False] * len(rows)))
            audio, audio_mask = (x.to(self.device).reshape(folds, n_max, *x.shape[1:]) for x in (audio, audio_mask))
            text, text_mask = (torch.stack([t[key] for t in texts]).to(self.device) for key in ("text", "text_mask"))
            text, text_mask = (x.reshape(paths, folds, n_max, *x.shape[2:]).transpose(0, 1) for x in (text, text_mask))
            with autocast(self.device, self.tc.precision):  # the losses see fp32 logits
                logits = self.paths(self.params, self.buffers, audio, audio_mask, text, text_mask).float()
            logits = logits.reshape(folds, paths * n_max, logits.shape[-1])
        else:  # every row its own (speech, text) pair: per fold, cr's golden rows, then its STT rows
            def per_path(values: list) -> list:  # each fold's n_max values, once for each path
                return [v for f in range(folds) for _ in range(paths) for v in values[f * n_max:(f + 1) * n_max]]

            sources = [s for _ in range(folds) for s in plan.train_sources for _ in range(n_max)]
            pairs = list(zip(per_path(rows), sources))
            batch = data.batch(pairs, per_path(copies) if data.audio_variants else None, runs[0].text_means,
                               runs[0].speech_means)
            if any(text_drop) or any(audio_drop):
                blank_modalities(batch, torch.tensor(per_path(text_drop)), torch.tensor(per_path(audio_drop)))
            batch = {k: v.reshape(folds, paths * n_max, *v.shape[1:]) for k, v in to_device(batch, self.device).items()}
            with autocast(self.device, self.tc.precision):
                logits = self.forward(self.params, self.buffers, batch["audio"], batch["audio_mask"], batch["text"],
                                      batch["text_mask"]).float()
        c = logits.shape[-1]
        y = torch.stack(y).to(self.device).reshape(-1)
        w = torch.tensor(weight, device=self.device).reshape(-1)
        cw = None if self.class_weights is None else self.class_weights.repeat_interleave(n_max, dim=0)
        if plan.mode == "cr":
            gold, stt = logits[:, :n_max].reshape(-1, c), logits[:, n_max:].reshape(-1, c)
            ce, kl = cr_per_example(gold, stt, y, plan.variant, cw)
            total = ce + plan.variant.lam * kl
        else:
            ce = total = ce_per_example(logits.reshape(-1, c), y, cw)
            kl = torch.zeros_like(ce)
        (total * w).sum().backward()
        real = (w > 0).to(total.dtype)
        per_fold = [(t.detach() * real).reshape(folds, n_max).sum(1).tolist() for t in (total, ce, kl)]
        return [{"loss": per_fold[0][f], "ce": per_fold[1][f], "kl": per_fold[2][f]} for f in range(folds)]

    def unstack(self) -> None:
        """Each fold's trained weights back into its own model."""
        for f, run in enumerate(self.runs):
            state = {k: v[f].detach() for k, v in {**self.params, **self.buffers}.items()}
            run.model.load_state_dict(state)


def train_stacked(
    recipe: Recipe, folds: Sequence[Fold], data: FeatureData, plans: Sequence[FoldPlan],
    outs: Sequence[Path | None], *, encoders: dict[str, Any] | None = None,
    input_arrays: dict[str, np.ndarray] | None = None, progress: bool = True,
) -> list[TrainResult]:
    """Train ``folds`` (each planned with :func:`~koemo.training.trainer.plan_fold`, all
    ``plan.stacked``) in stacks of :func:`stack_sizes`; write each fold's bundle to its ``outs``."""
    from tqdm.auto import tqdm

    from koemo.fusion.base import reads_text_means
    from koemo.fusion.registry import FUSIONS

    check_settings(recipe.train)
    results: list[TrainResult] = []
    start = 0
    head = FUSIONS.get(recipe.model.fusion)
    text_means, shared = reads_text_means(head), hasattr(head, "forward_paths")
    speech_means = bool(getattr(head, "speech_mean_only", False))
    for size in stack_sizes(data, plans[0], recipe.train.batch_size, len(folds), text_means, shared, speech_means):
        group = range(start, start + size)
        start += size
        runs = []
        for i in group:
            run = _FoldRun(recipe, folds[i], data, plans[i], None, Path(outs[i]) if outs[i] else None)
            run.input_arrays = input_arrays
            run.fit_inputs()
            runs.append(run)
        stack = _Stack(runs)
        tc = recipe.train
        bar = tqdm(range(tc.epochs), desc=f"{len(runs)} folds stacked", unit="epoch", leave=False,
                   disable=not progress)
        t_all = time.perf_counter()
        patience = tc.early_stopping
        for epoch in bar:
            # the one-fold trainer's early stop: a fold whose validation F1 has not improved for
            # ``patience`` epochs trains no more (its history ends there); the others go on
            stopped = [bool(patience and r.fold.valid and r.best["bad"] >= patience) for r in runs]
            if all(stopped):
                break
            t0 = time.perf_counter()
            sums = stack.train_epoch(epoch, stopped)
            live = len(runs) - sum(stopped)
            share = (time.perf_counter() - t0) / live  # each fold's share of the stack's time
            if any(r.fold.valid for r in runs):
                stack.unstack()  # each fold's weights into its model, to score its validation set
            for run, s, done in zip(runs, sums, stopped):
                if done:
                    continue
                if run.fold.valid:  # the trainer's own choice of the epoch: best F1, ties by NLL
                    run.validate(epoch, s, time.perf_counter() - share)
                else:
                    run.record(epoch, s, share, {})
            mean = sum(s["loss"] for s in sums) / max(1, sum(len(r.fold.train) for r, d in zip(runs, stopped) if not d))
            bar.set_postfix(loss=f"{mean:.3f}")
            log.debug("stack of %d folds, epoch %d/%d: mean train loss %.4f", len(runs), epoch + 1, tc.epochs, mean)
        bar.close()
        stack.unstack()
        log.info("%d folds trained stacked, %d epochs, in %.1f s (%s)", len(runs), tc.epochs,
                 time.perf_counter() - t_all, ", ".join(r.fold.name for r in runs))
        for run in runs:
            if not run.fold.valid:  # no validation set: the last epoch is the one kept
                run.best = {"f1": math.nan, "epoch": len(run.history), "state": _state_copy(run.model), "bad": 0}
            meta = {**run.meta(encoders), "stacked_folds": len(runs)}
            results.append(run.finish(meta))
    return results


__all__ = ["StackedAdam", "stack_sizes", "train_stacked"]
