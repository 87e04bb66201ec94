"""What the trainer does for small data: modality dropout, augmented copies, no validation set,
standardised inputs, and the final model trained on every clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from koemo.data.splits import Fold
from koemo.errors import KoemoError
from koemo.training.data import FeatureData
from koemo.training.trainer import FINAL_FOLD, blank_modalities, plan_fold, train_fold
from tests.training.synth import LABELS, feature_data, make_data, make_recipe


def test_blanking_gives_what_an_empty_transcript_gives():
    data, fold = feature_data()
    batch = data.batch([(u, "gold") for u in fold.train[:4]])
    blank_modalities(batch, torch.tensor([True, False, False, False]), torch.tensor([False, False, True, False]))
    assert batch["text"][0].abs().sum() == 0 and batch["text_mask"][0].tolist()[:2] == [True, False]
    assert batch["audio"][2].abs().sum() == 0 and batch["audio_mask"][2].sum() == 1
    assert batch["text"][1].abs().sum() > 0 and batch["audio_mask"][0].sum() > 1


def weak_audio_strong_text(n: int = 160, seed: int = 0) -> FeatureData:
    """Audio that carries the label weakly, gold text that gives it away, and an empty transcript."""
    rng = np.random.default_rng(seed)
    ca, ct = rng.normal(size=(4, 6)) * 0.6, rng.normal(size=(4, 5)) * 3
    audio, gold, empty, labels = {}, {}, {}, {}
    for i in range(n):
        uid, c = f"u{i:03d}", i % 4
        labels[uid] = LABELS[c]
        audio[uid] = (ca[c] + rng.normal(size=(6, 6))).astype(np.float16)
        gold[uid] = (ct[c] + 0.3 * rng.normal(size=(3, 5))).astype(np.float16)
        empty[uid] = np.zeros((1, 5), np.float16)
    return FeatureData(audio, {"gold": gold, "asr:empty": empty}, labels, LABELS)


def test_text_dropout_teaches_the_audio_path():
    """With the text blanked half the time the model answers from the audio when the transcript
    is empty; without, it leans on the text that gives the label away (3 seeds averaged)."""
    data = weak_audio_strong_text()
    ids = sorted(data.labels)
    fold = Fold("f", ids[60:], ids[:12], ids[12:60])
    scores = {p: np.mean([train_fold(make_recipe(epochs=6, text_dropout=p, seed=s), fold, data, progress=False)
                          .test["asr:empty"]["weighted_f1"] for s in range(3)]) for p in (0.0, 0.5)}
    assert scores[0.5] > scores[0.0] + 0.15, scores
    assert plan_fold(make_recipe(text_dropout=0.5), fold, data).fingerprint != \
        plan_fold(make_recipe(), fold, data).fingerprint


def test_without_validation_the_last_epoch_is_kept():
    data, fold = feature_data()
    nofold = Fold(fold.name, sorted(fold.train + fold.valid), [], fold.test)
    recipe = make_recipe(epochs=3)
    recipe.split.valid = "none"
    res = train_fold(recipe, nofold, data, progress=False)
    assert res.best_epoch == 3 and res.valid == {} and res.test["gold"]["weighted_f1"] > 0.5
    recipe.split.valid = "holdout"
    with pytest.raises(KoemoError, match="validation split is empty"):
        train_fold(recipe, nofold, data, progress=False)


def test_the_final_fold_trains_on_everything_and_tests_nothing(tmp_path):
    from koemo.training.bundle import load_bundle

    data, fold = feature_data()
    recipe = make_recipe(epochs=2)
    recipe.split.valid = "none"
    everything = Fold(FINAL_FOLD, sorted(fold.train + fold.valid + fold.test), [], [])
    res = train_fold(recipe, everything, data, out_dir=tmp_path / "final", progress=False)
    assert res.test == {} and res.predictions == {}
    assert load_bundle(tmp_path / "final").meta["split"]["n_train"] == 48
    with pytest.raises(KoemoError, match="test split is empty"):
        train_fold(recipe, Fold("other", everything.train, [], []), data, progress=False)


def test_augmented_copies_are_read_in_training_only():
    audio, text, labels = make_data()
    noisy = {u: (a.astype(np.float32) + 100).astype(np.float16) for u, a in audio.items()}
    data, fold = feature_data()
    with_copies = FeatureData(audio, text, labels, LABELS, [noisy])
    batch = with_copies.batch([(fold.train[0], "gold"), (fold.train[1], "gold")], copies=[1, 0])
    assert batch["audio"][0].min() > 50 and batch["audio"][1].max() < 50
    a = train_fold(make_recipe(epochs=2), fold, data, progress=False)
    b = train_fold(make_recipe(epochs=2), fold, with_copies, progress=False)
    assert a.history[-1]["train_loss"] != b.history[-1]["train_loss"]  # copies were trained on
    # ... and the test reads the clean features: same test clips, same data hash for the test side
    assert set(b.test) == set(a.test)


def test_standardised_inputs_are_fitted_on_the_training_clips():
    data, fold = feature_data()
    recipe = make_recipe(epochs=1)
    recipe.model.standardise = True
    res = train_fold(recipe, fold, data, progress=False)
    frames = np.concatenate([np.asarray(data.audio[u], dtype=np.float32) for u in fold.train])
    np.testing.assert_allclose(res.model.audio_mean.numpy(), frames.mean(0), rtol=1e-3, atol=1e-3)
