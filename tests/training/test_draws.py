"""The one-fold trainer's wiring around the loss: the random draws of a step (modality dropout,
augmented copies), what a step feeds the head, and the parts of the loss it records. Written
for the mutants of ``_FoldRun.draws`` and ``_FoldRun.micro_loss`` that survived (docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from koemo.training.data import FeatureData
from koemo.training.trainer import _FoldRun, plan_fold, train_fold
from tests.training.synth import LABELS, feature_data, make_data, make_fold, make_recipe


def fold_run(fusion: str = "shallow", model: nn.Module | None = None, variants: int = 0, **train) -> _FoldRun:
    audio, text, labels = make_data()
    rng = np.random.default_rng(1)
    copies = [{u: (a + rng.normal(size=a.shape)).astype(np.float16) for u, a in audio.items()}
              for _ in range(variants)]
    data = FeatureData(audio, text, labels, LABELS, audio_variants=copies)
    fold = make_fold(labels)
    recipe = make_recipe(fusion=fusion, **train)
    return _FoldRun(recipe, fold, data, plan_fold(recipe, fold, data), model, None)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_modality_dropout_draws_each_rate_and_never_blanks_both():
    (text, audio), copy = fold_run(text_dropout=0.3, audio_dropout=0.4).draws(20_000, gen())
    assert copy is None  # no augmented copies in the data: nothing to choose
    assert abs(text.float().mean().item() - 0.3) < 0.02
    assert not (text & audio).any()  # a clip keeps at least one modality
    # the audio is drawn among the clips that keep their text: 0.4 of the 70%
    assert abs(audio.float().mean().item() - 0.4 * 0.7) < 0.02


def test_without_dropout_nothing_is_blanked():
    assert fold_run().draws(64, gen()) == (None, None)


class Wrapped(nn.Module):
    """An end-to-end model's shape: encoders and the head held as ``.fusion``."""

    def __init__(self, fusion: nn.Module | None = None):
        super().__init__()
        self.speech = nn.Linear(2, 2)
        if fusion is not None:
            self.fusion = fusion


@pytest.mark.parametrize("fusion", ["audio-only", "text-only"])
def test_single_modal_models_keep_their_one_input(fusion):
    run = fold_run(fusion=fusion, text_dropout=0.5, audio_dropout=0.5)
    assert run.draws(64, gen())[0] is None
    wrapped = fold_run(fusion=fusion, model=Wrapped(run.model), text_dropout=0.5, audio_dropout=0.5)
    assert wrapped.draws(64, gen())[0] is None  # the head inside an end-to-end model decides


def test_a_model_that_does_not_say_what_it_reads_is_taken_as_reading_both():
    run = fold_run(model=Wrapped(), text_dropout=0.5)
    drop, _ = run.draws(400, gen())
    assert drop is not None and 0.35 < drop[0].float().mean().item() < 0.65


def test_augmented_copies_are_drawn_evenly_clean_one_included():
    _, copy = fold_run(variants=2).draws(9_000, gen())
    counts = np.bincount(copy, minlength=3)
    assert len(counts) == 3 and all(abs(c / 9_000 - 1 / 3) < 0.03 for c in counts), counts


@pytest.mark.parametrize("fusion,means", [("linear", True), ("shallow", True), ("fusion-transformer", False)])
def test_a_step_feeds_mean_only_heads_mean_text_vectors(monkeypatch, fusion, means):
    """The heads that read only the mean text vector train on batches of means (the resident
    copy, issue 15's speed-up); the others on every token."""
    seen = []
    original = FeatureData.batch

    def spy(self, pairs, copies=None, text_means=False, speech_means=0):
        seen.append(bool(text_means))
        return original(self, pairs, copies, text_means, speech_means)

    monkeypatch.setattr(FeatureData, "batch", spy)
    data, fold = feature_data()
    train_fold(make_recipe(fusion=fusion, epochs=1), fold, data, progress=False)
    assert seen and seen[0] is means  # the first call is the first training step's


def test_the_history_records_the_cross_entropy_of_a_plain_run_and_its_part_of_a_cr_run():
    data, fold = feature_data()
    plain = train_fold(make_recipe(epochs=2, text="gold"), fold, data, progress=False)
    for h in plain.history:
        assert h["train_ce"] > 0 and h["train_ce"] == pytest.approx(h["train_loss"])
    cr = train_fold(make_recipe(epochs=2, text="cr:fake"), fold, data, progress=False)
    for h in cr.history:
        assert 0 < h["train_ce"] < h["train_loss"] and h["train_kl"] > 0
        assert h["train_loss"] == pytest.approx(h["train_ce"] + h["train_kl"], rel=1e-4)


def test_bf16_training_runs_the_training_forward_passes_under_autocast(monkeypatch):
    import koemo.fusion as fusion

    seen = []
    build = fusion.build_from_config

    def spy(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
        return model

    monkeypatch.setattr(fusion, "build_from_config", spy)
    data, fold = feature_data()
    train_fold(make_recipe(epochs=1, precision="bf16"), fold, data, progress=False)
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
