"""The trainer on synthetic features: learning, bundles, seeds, accumulation, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from koemo.data.splits import Fold
from koemo.errors import BadInputError, KoemoError, UnknownLabelError
from koemo.training.bundle import load_bundle
from koemo.training.data import FeatureData
from koemo.training.trainer import accumulate_step, predict_proba, train_fold
from tests.training.synth import LABELS, feature_data, make_data, make_fold, make_recipe


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a, b, **kw):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **kw)


@pytest.mark.parametrize("fusion", ["shallow", "fusion-transformer", "mult", "audio-only", "text-only"])
def test_learns_and_writes_a_loadable_bundle(tmp_path, fusion):
    data, fold = feature_data()
    recipe = make_recipe(fusion=fusion, epochs=4)  # chance is about 0.25
    res = train_fold(recipe, fold, data, out_dir=tmp_path / "b", progress=False,
                     encoders={"speech": {"id": "fake-a", "version": "1"}})
    assert res.test["gold"]["weighted_f1"] > 0.5
    assert set(res.test) == {"gold", "asr:fake"}
    assert len(res.history) == 4 and 1 <= res.best_epoch <= 4
    files = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"bundle.json", "config.yaml", "model.safetensors", "predictions"} <= files
    assert "resume.pt" not in files  # removed once complete
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["complete"] and meta["labels"] == LABELS and meta["model"]["fusion"] == fusion
    assert meta["encoders"]["speech"]["id"] == "fake-a" and len(meta["data_hash"]) == 64
    assert meta["metrics"]["valid"]["weighted_f1"] == pytest.approx(res.valid["weighted_f1"])
    b = load_bundle(tmp_path / "b")
    p1 = predict_proba(b.model, data, fold.test, "gold")
    p2 = predict_proba(res.model, data, fold.test, "gold")
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    assert (tmp_path / "b" / "predictions" / "gold.jsonl").read_text().count("\n") == len(fold.test)
    assert not list(tmp_path.glob(".b.*"))  # no temporary directories left behind


def test_sentence_vectors_train(tmp_path):
    data, fold = feature_data(sentence_vectors=True)
    res = train_fold(make_recipe(fusion="mult", text="cr:fake"), fold, data, progress=False)
    assert res.test["gold"]["weighted_f1"] > 0.5


def test_modes_validate_on_the_service_text():
    data, fold = feature_data()
    for text, valid_source in (("gold", "gold"), ("asr:fake", "asr:fake"), ("cr:fake", "asr:fake")):
        res = train_fold(make_recipe(text=text, epochs=1), fold, data, progress=False)
        assert res.valid_source == valid_source
        assert ("train_kl" in res.history[0]) == text.startswith("cr:")


def test_seed_changes_initialisation_and_same_seed_reproduces():
    data, fold = feature_data()
    r0 = train_fold(make_recipe(seed=0, epochs=0), fold, data, progress=False)
    r1 = train_fold(make_recipe(seed=1, epochs=0), fold, data, progress=False)
    w0, w1 = weights(r0.model), weights(r1.model)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    a = train_fold(make_recipe(seed=3, dropout=0.2), fold, data, progress=False)
    b = train_fold(make_recipe(seed=3, dropout=0.2), fold, data, progress=False)
    assert_same(weights(a.model), weights(b.model), atol=0, rtol=0)


@pytest.mark.parametrize("text", ["gold", "cr:fake"])
def test_gradient_accumulation_gives_the_full_batch_mean_gradient(text):
    import torch.nn.functional as F

    from koemo.fusion import build_fusion
    from koemo.training.losses import ce_sum, cr_sum

    data, fold = feature_data()
    torch.manual_seed(0)
    model = build_fusion("mult", 6, 5, 4, hidden=8, heads=2, dropout=0.0)
    ids = fold.train[:13]  # an odd size: uneven micro-batches

    def loss_fn(mb):
        y = data.y(mb)
        if text == "gold":
            return ce_sum(model(**data.batch([(u, "gold") for u in mb])), y), {}
        b = data.batch([(u, "gold") for u in mb] + [(u, "asr:fake") for u in mb])
        logits = model(**b)
        return cr_sum(logits[: len(mb)], logits[len(mb):], y)

    def grads(accum):
        model.zero_grad()
        accumulate_step(model, loss_fn, ids, grad_accum=accum)
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    g1, g4, g20 = grads(1), grads(4), grads(20)  # 20 > 13: some micro-batches are empty
    assert_same(g1, g4, atol=1e-6, rtol=1e-5)
    assert_same(g1, g20, atol=1e-6, rtol=1e-5)
    if text == "gold":  # and it is the plain mean cross-entropy's gradient
        model.zero_grad()
        F.cross_entropy(model(**data.batch([(u, "gold") for u in ids])), data.y(ids)).backward()
        assert_same(g1, {n: p.grad for n, p in model.named_parameters()}, atol=1e-6, rtol=1e-5)


def test_gradient_accumulation_trains_like_full_batch():
    data, fold = feature_data()
    full = train_fold(make_recipe(batch_size=16, grad_accum=1, epochs=1), fold, data, progress=False)
    acc = train_fold(make_recipe(batch_size=16, grad_accum=4, epochs=1), fold, data, progress=False)
    assert_same(weights(full.model), weights(acc.model), atol=1e-4, rtol=1e-3)


def test_resume_after_kill_continues_at_the_next_epoch(tmp_path):
    data, fold = feature_data()
    recipe = make_recipe(text="cr:fake", dropout=0.1, fusion="fusion-transformer", epochs=3)
    ref = train_fold(recipe, fold, data, out_dir=tmp_path / "ref", progress=False)

    class Kill(Exception):
        pass

    def kill_after_first(epoch, info):
        if epoch == 1:
            raise Kill

    with pytest.raises(Kill):
        train_fold(recipe, fold, data, out_dir=tmp_path / "run", progress=False, callbacks=[kill_after_first])
    meta = json.loads((tmp_path / "run" / "bundle.json").read_text())
    assert meta["complete"] is False and meta["epochs_done"] == 1
    assert (tmp_path / "run" / "resume.pt").exists()

    seen = []
    res = train_fold(recipe, fold, data, out_dir=tmp_path / "run", progress=False,
                     callbacks=[lambda e, info: seen.append(e)])
    assert seen == [2, 3]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert_same(weights(res.model), weights(ref.model), atol=0, rtol=0)
    assert res.test == ref.test

    # a different run refuses the old state instead of silently mixing
    with pytest.raises(KoemoError, match="different run"):
        with pytest.raises(Kill):
            train_fold(recipe, fold, data, out_dir=tmp_path / "run2", progress=False, callbacks=[kill_after_first])
        train_fold(make_recipe(text="cr:fake", dropout=0.1, fusion="fusion-transformer", lr=1e-3), fold, data,
                   out_dir=tmp_path / "run2", progress=False)


def test_checkpoint_every_sets_where_a_killed_run_resumes(tmp_path):
    from koemo.training.trainer import bundle_done, plan_fold

    data, fold = feature_data()

    class Kill(Exception):
        pass

    def kill_after(n):
        def cb(epoch, info):
            if epoch == n:
                raise Kill
        return cb

    # every 2 epochs: killed after epoch 3, the run resumes after epoch 2
    recipe = make_recipe(epochs=4, checkpoint_every=2)
    ref = train_fold(recipe, fold, data, out_dir=tmp_path / "ref", progress=False)
    with pytest.raises(Kill):
        train_fold(recipe, fold, data, out_dir=tmp_path / "run", progress=False, callbacks=[kill_after(3)])
    assert json.loads((tmp_path / "run" / "bundle.json").read_text())["epochs_done"] == 2
    seen = []
    res = train_fold(recipe, fold, data, out_dir=tmp_path / "run", progress=False,
                     callbacks=[lambda e, info: seen.append(e)])
    assert seen == [3, 4] and res.test == ref.test
    # 0: nothing is written until the fold is finished
    recipe0 = make_recipe(epochs=4, checkpoint_every=0)
    with pytest.raises(Kill):
        train_fold(recipe0, fold, data, out_dir=tmp_path / "run0", progress=False, callbacks=[kill_after(3)])
    assert not (tmp_path / "run0").exists()
    fp = plan_fold(recipe0, fold, data, stack=False).fingerprint  # train_fold trains one fold alone
    assert not bundle_done(tmp_path / "run0", fp)
    res0 = train_fold(recipe0, fold, data, out_dir=tmp_path / "run0", progress=False)
    assert res0.test == ref.test  # how often it checkpoints does not change the run ...
    assert bundle_done(tmp_path / "run0", fp)  # ... nor its fingerprint
    assert fp == plan_fold(recipe, fold, data, stack=False).fingerprint
    other = plan_fold(make_recipe(epochs=4, lr=0.5), fold, data, stack=False)
    assert not bundle_done(tmp_path / "run0", other.fingerprint)
    with pytest.raises(KoemoError, match="checkpoint_every >= 0"):
        train_fold(make_recipe(checkpoint_every=-1), fold, data, progress=False)


def test_early_stopping_and_class_weights():
    data, fold = feature_data()
    res = train_fold(make_recipe(epochs=6, early_stopping=1, lr=0.0, class_weights=True), fold, data,
                     progress=False)
    assert len(res.history) == 2 and res.best_epoch == 1


def test_unknown_label_is_refused_with_the_utterance():
    audio, text, labels = make_data()
    labels["u020"] = "surprise"
    data = FeatureData(audio, text, labels, LABELS)
    with pytest.raises(UnknownLabelError, match=r"u020: label 'surprise' is not in the recipe's label set"):
        train_fold(make_recipe(), make_fold(labels), data, progress=False)


def test_missing_asr_text_names_the_utterance_and_the_command():
    audio, text, labels = make_data()
    del text["asr:fake"]["u030"]
    data = FeatureData(audio, text, labels, LABELS)
    with pytest.raises(BadInputError, match=r"u030: no 'asr:fake'.*koemo transcribe --backend fake"):
        train_fold(make_recipe(text="cr:fake"), make_fold(labels), data, progress=False)
    # gold training does not need it for training; the source is then not reported on test
    fold = make_fold(labels)
    res = train_fold(make_recipe(text="gold", epochs=1), fold, data, progress=False)
    assert "u030" not in fold.test and "asr:fake" in res.test


def test_nan_features_are_refused_with_the_utterance():
    audio, text, labels = make_data()
    audio["u040"] = audio["u040"].copy()
    audio["u040"][1, 2] = np.nan
    data = FeatureData(audio, text, labels, LABELS)
    with pytest.raises(BadInputError, match=r"u040: speech features contain NaN"):
        train_fold(make_recipe(), make_fold(labels), data, progress=False)


def test_empty_split_is_refused():
    data, fold = feature_data()
    fold.valid = []
    with pytest.raises(KoemoError, match="validation split is empty"):
        train_fold(make_recipe(), fold, data, progress=False)


def test_a_bundle_trained_with_audio_pool_loads_with_it(tmp_path):
    """``koemo predict``/``serve`` rebuild the model with load_bundle: audio_pool must survive the
    round trip, or the loaded model would attend over unpooled frames."""
    data, fold = feature_data()
    recipe = make_recipe(fusion="fusion-transformer", epochs=2)
    recipe.model.audio_pool = 3
    res = train_fold(recipe, fold, data, out_dir=tmp_path / "b", progress=False)
    b = load_bundle(tmp_path / "b")
    assert b.model.audio_pool == 3 and b.meta["model"]["audio_pool"] == 3
    np.testing.assert_allclose(predict_proba(b.model, data, fold.test, "gold"),
                               predict_proba(res.model, data, fold.test, "gold"), atol=1e-6)


def test_bf16_precision_learns_changes_the_numbers_and_keeps_old_fingerprints():
    import dataclasses

    from koemo.training.trainer import _fingerprint, plan_fold

    data, fold = feature_data()
    kw = dict(fusion="fusion-transformer", epochs=4, text="cr:fake")
    fp32 = train_fold(make_recipe(**kw), fold, data, progress=False)
    bf16 = train_fold(make_recipe(precision="bf16", **kw), fold, data, progress=False)
    assert bf16.test["gold"]["weighted_f1"] > 0.5 and bf16.test["asr:fake"]["weighted_f1"] > 0.5
    p32 = np.array([p.probs for p in fp32.predictions["gold"]])
    p16 = np.array([p.probs for p in bf16.predictions["gold"]])
    assert np.isfinite(p16).all() and np.abs(p32 - p16).max() > 1e-4  # autocast really ran
    # a bf16 run is another run; an fp32 run alone keeps the fingerprint it had before the field existed
    fp = plan_fold(make_recipe(**kw), fold, data, stack=False)
    assert fp.fingerprint != plan_fold(make_recipe(precision="bf16", **kw), fold, data).fingerprint
    old_cfg = dataclasses.asdict(make_recipe(**kw))
    del old_cfg["train"]["precision"], old_cfg["train"]["stack_folds"]  # both added later
    assert _fingerprint(old_cfg, fold, fp.data_hash, 1) == fp.fingerprint
    with pytest.raises(KoemoError, match="train.precision='fp16'"):
        train_fold(make_recipe(precision="fp16"), fold, data, progress=False)


def test_fingerprints_are_those_of_the_bundles_already_trained():
    """Values computed with koemo before the experiments/bundle restructure (commit 778ed49): a
    change here would retrain every cached fold of every grid. Folds trained alone; a fold with a
    validation set trained stacked (since 2026-12-08) is a new run."""
    from koemo.training.trainer import plan_fold

    data, fold = feature_data()
    expected = {
        (): "a5514d6279fc83b4223f0db5e912a7182a3b60fe90ee23bc34504217da6067ee",
        (("text", "cr:fake"), ("fusion", "mult")): "52fe27bb1a4aa36a27573562b09515ce5c2a0d0add11c76f7e4c139e3e601e74",
        (("precision", "bf16"),): "9ebee1861e1404d9696a528be3b2b59eecc4d77453603e034704f55ccc6a7e84",
    }
    for kw, fingerprint in expected.items():
        assert plan_fold(make_recipe(**dict(kw)), fold, data, stack=False).fingerprint == fingerprint
    # a per-fusion option is a different run
    recipe = make_recipe()
    recipe.model.options = {"x": 1}
    assert plan_fold(recipe, fold, data, stack=False).fingerprint != expected[()]


def test_the_trainer_gives_cr_the_golden_path_first():
    """With lambda 0, consistency regularization is cross-entropy on the golden path alone: the
    same weights as training on gold text, not as training on the ASR text (a swapped wiring of
    cr_sum's two logits would train the STT path)."""
    data, fold = feature_data()
    kw = dict(epochs=2, dropout=0.0)
    cr = train_fold(make_recipe(text="cr:fake", cr_lambda=0.0, **kw), fold, data, progress=False).model
    gold = train_fold(make_recipe(text="gold", **kw), fold, data, progress=False).model
    asr = train_fold(make_recipe(text="asr:fake", **kw), fold, data, progress=False).model
    assert_same(cr.state_dict(), gold.state_dict(), atol=1e-5, rtol=1e-4)
    diff = max((a - b).abs().max().item() for a, b in zip(cr.state_dict().values(), asr.state_dict().values()))
    assert diff > 1e-3
    # the KL pulls the STT path towards the golden one: with CE on gold, a lambda > 0 changes training
    with_kl = train_fold(make_recipe(text="cr:fake", cr_lambda=1.0, **kw), fold, data, progress=False).model
    assert max((a - b).abs().max().item() for a, b in zip(with_kl.state_dict().values(),
                                                           gold.state_dict().values())) > 1e-4


def test_class_weights_reach_the_loss(monkeypatch):
    """train.class_weights: the balanced weights of the fold's training labels are what the loss
    gets, and (lr > 0) they change what is learned on imbalanced data."""
    import koemo.training.trainer as trainer_module
    from koemo.training.losses import class_weights

    audio, text, labels = make_data(n=64)
    ids = sorted(labels)
    train = [u for u in ids[16:] if labels[u] != "angry" or u.endswith(("3", "7"))]  # angry is rare
    fold = Fold("f", train, ids[:8], ids[8:16])
    data = FeatureData(audio, text, labels, LABELS)
    seen = []
    real = trainer_module.ce_sum

    def spy(logits, y, cw=None):
        seen.append(None if cw is None else cw.clone())
        return real(logits, y, cw)

    monkeypatch.setattr(trainer_module, "ce_sum", spy)
    weighted = train_fold(make_recipe(epochs=2, class_weights=True, dropout=0.0), fold, data, progress=False)
    expected = class_weights(data.y(train).tolist(), 4)
    assert seen and all(w is not None and torch.equal(w, expected) for w in seen)
    assert expected[LABELS.index("angry")] > 1.5
    seen.clear()
    plain = train_fold(make_recipe(epochs=2, class_weights=False, dropout=0.0), fold, data, progress=False)
    assert seen and all(w is None for w in seen)
    assert max((a - b).abs().max().item() for a, b in zip(weighted.model.state_dict().values(),
                                                           plain.model.state_dict().values())) > 1e-4
