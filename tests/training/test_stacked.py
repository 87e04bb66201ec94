"""Folds trained stacked equal folds trained one at a time (koemo.training.stacked)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from koemo.data.splits import Fold
from koemo.errors import KoemoError
from koemo.training import stacked as stacked_mod
from koemo.training.data import FeatureData, pad
from koemo.training.run import run_folds
from koemo.training.stacked import StackedAdam, stack_sizes
from koemo.training.trainer import plan_fold, stack_refusal, train_fold
from tests.training.synth import LABELS, make_data, make_recipe


def _folds(labels: dict) -> list[Fold]:
    """Three folds without a validation set; 30, 33 and 36 training clips, so at batch 8 the
    folds take 4, 5 and 5 steps an epoch (a fold sits some steps out)."""
    ids = sorted(labels)
    folds = []
    for k, n_train in enumerate((30, 33, 36)):
        test = ids[k * 6:(k + 1) * 6]
        rest = [u for u in ids if u not in test]
        folds.append(Fold(f"f{k}", rest[:n_train], [], test))
    return folds


def _data(copies: bool = True) -> FeatureData:
    audio, text, labels = make_data(n=48)
    variants = []
    if copies:  # an augmented copy of the speech: every clip's frames scaled and shifted
        variants.append({u: (a.astype(np.float32) * 0.8 + 0.1).astype(np.float16) for u, a in audio.items()})
    return FeatureData(audio, text, labels, LABELS, variants)


def _recipe(fusion="linear", **kw):
    r = make_recipe(fusion=fusion, text=kw.pop("text", "cr:fake"), epochs=kw.pop("epochs", 6),
                    weight_decay=0.01, class_weights=True, text_dropout=0.3, audio_dropout=0.1, **kw)
    r.model.standardise = True
    r.split.valid = "none"
    return r


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_linear_head_trains_stacked_to_the_weights_it_gets_alone(tmp_path):
    data = _data()
    folds = _folds(data.labels)
    alone = _recipe()
    alone.train.stack_folds = False
    together = _recipe()
    for fold in folds:
        assert plan_fold(together, fold, data).stacked and not plan_fold(alone, fold, data).stacked
    one = run_folds(alone, folds, data, out_for=lambda f: tmp_path / "alone" / f.name, progress=False)
    stk = run_folds(together, folds, data, out_for=lambda f: tmp_path / "stacked" / f.name, progress=False)
    for a, b in zip(one, stk):
        assert a.trained and b.trained
        wa, wb = _weights(a.result.model), _weights(b.result.model)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
        assert [h["train_loss"] for h in b.result.history] == pytest.approx(
            [h["train_loss"] for h in a.result.history], rel=1e-4)
        assert [h["train_kl"] for h in b.result.history] == pytest.approx(
            [h["train_kl"] for h in a.result.history], rel=1e-3, abs=1e-6)
        pa = [p.probs for p in a.result.predictions["asr:fake"]]
        pb = [p.probs for p in b.result.predictions["asr:fake"]]
        np.testing.assert_allclose(pb, pa, atol=1e-5)
        meta = json.loads((b.out / "bundle.json").read_text())
        assert meta["complete"] and meta["stacked_folds"] == 3 and meta["epochs_done"] == 6
        assert meta["fingerprint"] != json.loads((a.out / "bundle.json").read_text())["fingerprint"]
    # the finished stacked bundles are reused, not trained again
    again = run_folds(together, folds, data, out_for=lambda f: tmp_path / "stacked" / f.name, progress=False)
    assert not any(o.trained for o in again)


@pytest.mark.parametrize("weighted", [True, False])
def test_cross_entropy_alone_trains_stacked_as_alone(weighted):
    """Human text, no CR: the stacked step is cross-entropy only. With class weights and dropout,
    and with neither (no weights to repeat, no draws to make), every fold trains to its weights
    alone and reports the same loss and cross-entropy."""
    data = _data(copies=False)
    folds = _folds(data.labels)
    runs = {}
    for stack in (False, True):
        r = make_recipe(fusion="linear", text="gold", epochs=4, weight_decay=0.01, class_weights=weighted,
                        text_dropout=0.3 if weighted else 0.0, audio_dropout=0.1 if weighted else 0.0)
        r.model.standardise, r.split.valid, r.train.stack_folds = True, "none", stack
        runs[stack] = run_folds(r, folds, data, out_for=lambda f: None, progress=False)
    for a, b in zip(runs[False], runs[True]):
        for k, v in _weights(a.result.model).items():
            torch.testing.assert_close(_weights(b.result.model)[k], v, rtol=1e-4, atol=1e-5)
        for key in ("train_loss", "train_ce"):
            assert [h[key] for h in b.result.history] == pytest.approx([h[key] for h in a.result.history], rel=1e-4)


def test_stacks_split_by_the_memory_budget_train_the_same(tmp_path, monkeypatch):
    data = _data(copies=False)
    folds = _folds(data.labels)
    recipe = _recipe(text="gold")
    whole = run_folds(recipe, folds, data, out_for=lambda f: None, progress=False)
    plan = plan_fold(recipe, folds[0], data)
    assert stack_sizes(data, plan, 8, 3) == [3]
    row = 4 * (8 * 6 + 5 * 5)  # longest clip x dims, per modality, float32
    monkeypatch.setattr(stacked_mod, "STACK_BUDGET", row * 8 * 2)  # 2 folds' steps
    assert stack_sizes(data, plan, 8, 3) == [2, 1]
    assert stack_sizes(data, plan, 8, 7) == [2, 2, 2, 1]
    monkeypatch.setattr(stacked_mod, "STACK_BUDGET", row * 8 * 5)
    assert stack_sizes(data, plan, 8, 7) == [4, 3]  # balanced, not 5 + 2
    monkeypatch.setattr(stacked_mod, "STACK_BUDGET", row * 8 * 2)
    split = run_folds(recipe, folds, data, out_for=lambda f: None, progress=False)
    for a, b in zip(whole, split):
        for k, v in _weights(a.result.model).items():
            torch.testing.assert_close(_weights(b.result.model)[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fusion", ["shallow", "mult"])
def test_heads_with_dropout_learn_stacked(fusion):
    data = _data()
    folds = _folds(data.labels)
    recipe = _recipe(fusion=fusion, epochs=8, dropout=0.1)
    recipe.train.lr = 1e-2
    out = run_folds(recipe, folds, data, out_for=lambda f: None, progress=False)
    for o in out:
        assert o.result.test["gold"]["weighted_f1"] > 0.5  # chance is about 0.25
        assert len(o.result.history) == 8


def test_what_trains_alone_and_why():
    data = _data()
    recipe = _recipe()
    fold = _folds(data.labels)[0]
    assert stack_refusal(recipe, fold) is None
    with_valid = Fold("v", fold.train[4:], fold.train[:4], fold.test)
    assert stack_refusal(recipe, with_valid) is None and plan_fold(recipe, with_valid, data).stacked
    assert "data-parallel" in stack_refusal(recipe, fold, world=2)
    # a fold trained alone keeps the fingerprint it had before stacking existed; a stacked one is new
    on = plan_fold(recipe, with_valid, data).fingerprint
    recipe.train.stack_folds = False
    assert "stack_folds" in stack_refusal(recipe, fold)
    assert plan_fold(recipe, with_valid, data).fingerprint != on


def test_bf16_trains_stacked_under_autocast():
    """train.precision=bf16: the stacked forward runs under bfloat16 autocast (its predictions
    differ from fp32's) and learns as a bf16 fold alone does."""
    data = _data(copies=False)
    folds = _folds(data.labels)
    probs, weights = {}, {}
    for precision, stack in (("fp32", True), ("bf16", True), ("bf16", False)):
        r = _recipe(fusion="fusion-transformer", text="gold", epochs=4, precision=precision)
        r.train.lr, r.train.text_dropout, r.train.audio_dropout, r.train.stack_folds = 1e-2, 0.0, 0.0, stack
        out = run_folds(r, folds, data, out_for=lambda f: None, progress=False)
        assert all(o.result.test["gold"]["weighted_f1"] > 0.5 for o in out)
        probs[precision, stack] = np.array([p.probs for o in out for p in o.result.predictions["gold"]])
        weights[precision, stack] = torch.cat([v.flatten() for o in out for v in _weights(o.result.model).values()])
    # trained under autocast: other weights than fp32's (the test predictions run under it either way)
    assert (weights["bf16", True] - weights["fp32", True]).abs().max() > 1e-3
    np.testing.assert_allclose(probs["bf16", True], probs["bf16", False], atol=0.05)
    # the linear head's CR step (speech once for both text paths) as well
    for precision in ("fp32", "bf16"):
        out = run_folds(_recipe(precision=precision), folds, data, out_for=lambda f: None, progress=False)
        weights[precision] = torch.cat([v.flatten() for o in out for v in _weights(o.result.model).values()])
    assert (weights["bf16"] - weights["fp32"]).abs().max() > 1e-4  # 0 without autocast


def _valid_folds(labels: dict) -> list[Fold]:
    """The three folds of :func:`_folds`, each with its first 6 training clips as validation."""
    return [Fold(f.name, f.train[6:], f.train[:6], f.test) for f in _folds(labels)]


@pytest.mark.parametrize("patience", [0, 2])
def test_folds_with_a_validation_set_pick_the_epoch_stacked_as_alone(tmp_path, monkeypatch, patience):
    """Stacked folds score their validation set after every epoch as a fold alone does: the same
    best epoch (F1, ties by NLL), the same kept weights and test predictions; with early stopping
    each fold stops at its own epoch (no more optimiser steps) while the others go on."""
    updates = []
    real_step = StackedAdam.step
    monkeypatch.setattr(StackedAdam, "step", lambda self, active: updates.append(active.clone()) or
                        real_step(self, active))
    data = _data()
    folds = _valid_folds(data.labels)
    out = {}
    for stack in (False, True):
        r = _recipe(epochs=12, early_stopping=patience)
        r.split.valid, r.train.lr, r.train.stack_folds = "holdout", 0.2, stack
        out[stack] = run_folds(r, folds, data, out_for=lambda f, s=stack: tmp_path / str(s) / f.name,
                               progress=False)
    for a, b in zip(out[False], out[True]):
        assert b.result.best_epoch == a.result.best_epoch
        assert len(b.result.history) == len(a.result.history)
        assert [h["valid_weighted_f1"] for h in b.result.history] == [h["valid_weighted_f1"] for h in a.result.history]
        for k, v in _weights(a.result.model).items():
            torch.testing.assert_close(_weights(b.result.model)[k], v, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([p.probs for p in b.result.predictions["asr:fake"]],
                                   [p.probs for p in a.result.predictions["asr:fake"]], atol=1e-5)
        meta = json.loads((b.out / "bundle.json").read_text())
        assert meta["stacked_folds"] == 3 and meta["best_epoch"] == a.result.best_epoch
    best = [o.result.best_epoch for o in out[True]]
    done = [len(o.result.history) for o in out[True]]
    assert all(b < 12 for b in best)  # validation chose an earlier epoch than the last
    if patience:  # stopped patience epochs after each fold's best, not all at the same epoch
        assert done == [b + patience for b in best] and len(set(done)) > 1
    per_epoch = [-(-len(f.train) // 8) for f in folds]  # batch 8
    assert torch.stack(updates).sum(0).tolist() == [e * n for e, n in zip(done, per_epoch)]


def test_stacked_adam_is_adam_per_fold_and_leaves_a_resting_fold_alone():
    torch.manual_seed(0)
    w = [torch.randn(3, 4) for _ in range(2)]
    grads = [[torch.randn(3, 4) for _ in range(2)] for _ in range(4)]
    ref = [w[f].clone().requires_grad_() for f in range(2)]
    opts = [torch.optim.Adam([r], lr=0.1, weight_decay=0.05) for r in ref]
    stacked = torch.stack(w).requires_grad_()
    opt = StackedAdam([stacked], 2, lr=0.1, weight_decay=0.05)
    for step, g in enumerate(grads):
        active = torch.tensor([True, step % 2 == 0])  # fold 1 sits out every other step
        for f in range(2):
            if active[f]:
                ref[f].grad = g[f].clone()
                opts[f].step()
        stacked.grad = torch.stack(g)
        before = stacked.detach().clone()
        opt.step(active)
        if not active[1]:
            assert torch.equal(stacked.detach()[1], before[1])
    for f in range(2):
        torch.testing.assert_close(stacked.detach()[f], ref[f].detach(), rtol=1e-6, atol=1e-7)


def test_batches_mixing_clean_and_augmented_speech_equal_padding():
    rng = np.random.default_rng(3)
    ids = [f"u{i}" for i in range(6)]
    clean = {u: rng.standard_normal((int(rng.integers(1, 6)), 3)).astype(np.float16) for u in ids}
    copy = {u: rng.standard_normal((int(rng.integers(1, 9)), 3)).astype(np.float16) for u in ids}
    text = {"gold": {u: rng.standard_normal((2, 4)).astype(np.float32) for u in ids}}
    data = FeatureData(clean, text, {u: "a" for u in ids}, ["a"], [copy])
    pairs = [(u, "gold") for u in ids]
    which = [0, 1, 1, 0, 1, 0]
    got = data.batch(pairs, which)
    want, mask = pad([(clean, copy)[k][u] for k, u in zip(which, ids)])
    torch.testing.assert_close(got["audio"], want, rtol=0, atol=0)
    assert torch.equal(got["audio_mask"], mask)


def test_train_fold_trains_alone_under_the_fingerprint_of_a_fold_alone(tmp_path):
    data = _data(copies=False)
    fold = _folds(data.labels)[0]
    recipe = _recipe(text="gold", epochs=2)
    res = train_fold(recipe, fold, data, out_dir=tmp_path / "b", progress=False,
                     fold_plan=plan_fold(recipe, fold, data))
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert len(res.history) == 2 and "stacked_folds" not in meta
    assert meta["fingerprint"] == plan_fold(recipe, fold, data, stack=False).fingerprint
    assert meta["fingerprint"] != plan_fold(recipe, fold, data).fingerprint


def test_a_cosine_schedule_trains_stacked_as_alone_and_differs_from_a_constant_rate():
    """train.lr_schedule=cosine: both trainers step each epoch at lr * (1 + cos(pi e / E)) / 2
    (the same weights stacked and alone), and that is not what a constant rate learns."""
    from koemo.training.steps import lr_at

    data = _data(copies=False)
    folds = _folds(data.labels)[:2]
    runs = {}
    for stack, schedule in ((False, "cosine"), (True, "cosine"), (True, "constant")):
        r = make_recipe(fusion="linear", text="gold", epochs=4, weight_decay=0.01, lr_schedule=schedule)
        r.model.standardise, r.split.valid, r.train.stack_folds = True, "none", stack
        runs[stack, schedule] = run_folds(r, folds, data, out_for=lambda f: None, progress=False)
    for a, b, c in zip(runs[False, "cosine"], runs[True, "cosine"], runs[True, "constant"]):
        for k, v in _weights(a.result.model).items():
            torch.testing.assert_close(_weights(b.result.model)[k], v, rtol=1e-4, atol=1e-5)
        assert max((_weights(c.result.model)[k] - v).abs().max().item() for k, v in _weights(a.result.model).items()) > 1e-3
    tc = make_recipe(lr_schedule="cosine", epochs=4).train
    assert [lr_at(tc, e) / tc.lr for e in range(4)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    tc.lr_schedule = "constant"
    assert lr_at(tc, 3) == tc.lr
    # the schedule's length is part of a cosine run's fingerprint (a constant rate's run may go on)
    fold = folds[0]
    prints = {}
    for schedule in ("constant", "cosine"):
        for epochs in (4, 6):
            r = make_recipe(fusion="linear", text="gold", epochs=epochs, lr_schedule=schedule)
            r.split.valid = "none"
            prints[schedule, epochs] = plan_fold(r, fold, data).fingerprint
    assert prints["constant", 4] == prints["constant", 6] and prints["cosine", 4] != prints["cosine", 6]
    for stack in (False, True):  # refused by both trainers before any work
        r = make_recipe(fusion="linear", lr_schedule="linear")
        r.split.valid, r.train.stack_folds = "none", stack
        with pytest.raises(KoemoError, match="train.lr_schedule='linear'"):
            run_folds(r, folds, data, out_for=lambda f: None, progress=False)


def test_cr_steps_of_the_linear_head_batch_each_clips_speech_once(monkeypatch):
    """The linear head's CR step reads a clip's speech once for its golden and STT paths
    (LinearProbe.forward_paths), so a step's speech batch has one row a clip, not two, and a
    stack holds more folds within the same budget."""
    from koemo.fusion.models import LinearProbe

    data = _data()
    folds = _folds(data.labels)
    rows, calls = [], []
    real_batch, real_paths = FeatureData.speech_batch, LinearProbe.forward_paths
    monkeypatch.setattr(FeatureData, "speech_batch", lambda self, ids, copies=None, means=0: rows.append(len(ids)) or
                        real_batch(self, ids, copies, means))
    monkeypatch.setattr(LinearProbe, "forward_paths", lambda self, *a: calls.append(1) or real_paths(self, *a))
    recipe = _recipe()
    run_folds(recipe, folds, data, out_for=lambda f: None, progress=False)
    assert calls and max(rows) == 3 * 8  # 3 folds x batch 8 (padded to the fullest fold), once, not 2 x 24
    plan = plan_fold(recipe, folds[0], data)
    clip = 4 * (8 * 6 + 2 * 5 * 5)  # float32: the longest speech (8 x 6) once, the longest text (5 x 5) twice
    monkeypatch.setattr(stacked_mod, "STACK_BUDGET", clip * 8 * 4)  # 4 folds' steps of that
    assert stack_sizes(data, plan, 8, 4, shared_speech=True) == [4]
    assert stack_sizes(data, plan, 8, 4, shared_speech=False) == [2, 2]  # speech twice a clip: 2 x 73 > 98


@pytest.mark.parametrize("stack", [True, False])
def test_a_shallow_head_trains_on_each_clips_mean_speech(monkeypatch, stack):
    """The shallow head reads its speech only through the mean of its pooled frames: training
    steps (stacked or alone) and its validation and test passes batch that mean, one vector a
    clip, and it learns as from the frames (the same logits: tests/training/test_batches.py)."""
    seen = []
    real = FeatureData.speech_batch
    monkeypatch.setattr(FeatureData, "speech_batch", lambda self, ids, copies=None, means=0:
                        seen.append(means) or real(self, ids, copies, means))
    data = _data(copies=False)
    recipe = _recipe(fusion="shallow", text="gold", epochs=3)
    recipe.model.pooling, recipe.model.audio_pool, recipe.train.stack_folds = "mean", 2, stack
    out = run_folds(recipe, _valid_folds(data.labels), data, out_for=lambda f: None, progress=False)
    assert seen and set(seen) == {2}
    assert all(len(o.result.history) == 3 for o in out)
