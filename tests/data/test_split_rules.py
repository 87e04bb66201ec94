"""The rules of the split protocols at their edges: fold names, empty grid cells, the stratified
ratios, the text-neutral fold's disjointness, exact hold-out sizes, stratified dealing, the
split file's form and every error message word for word. Written for the surviving mutants of
``koemo/data/splits.py`` (docs/testing.md); tests/data/test_splits.py has the main properties."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from koemo.data.manifest import Utterance
from koemo.data.splits import _deal, load_folds, make_folds, save_folds
from koemo.errors import KoemoError

LABELS = ("neutral", "happy", "sad", "angry")


def grid(n_speakers: int = 9, n_groups: int = 12, labels=LABELS) -> list[Utterance]:
    """Every speaker reads every sentence; sentence g is read in emotion g mod len(labels)."""
    return [Utterance(f"s{s}g{g}", "x", labels[g % len(labels)], f"t{g}", f"spk{s}", f"g{g}")
            for s in range(n_speakers) for g in range(n_groups)]


def refused(message: str, *args, **kwargs) -> None:
    with pytest.raises(KoemoError) as e:
        make_folds(*args, **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("valid", ["holdout", "none"])
def test_folds_are_named_by_protocol_and_cell(valid):
    utts = grid()
    assert [f.name for f in make_folds(utts, "speaker", folds=3, valid=valid)] == ["speaker0", "speaker1", "speaker2"]
    assert [f.name for f in make_folds(utts, "sentence", folds=3, valid=valid)] == ["sentence0", "sentence1", "sentence2"]
    assert [f.name for f in make_folds(utts, "speaker-sentence", folds=2, valid=valid)] == \
        ["spk0-sent0", "spk0-sent1", "spk1-sent0", "spk1-sent1"]
    assert [f.name for f in make_folds(utts, "stratified", valid=valid)] == ["stratified"]


def test_the_defaults_are_a_3x3_speaker_sentence_grid_of_seed_0():
    utts = grid()
    default = make_folds(utts)
    assert [f.name for f in default] == [f"spk{i}-sent{j}" for i in range(3) for j in range(3)]
    assert default == make_folds(utts, "speaker-sentence", folds=3, seed=0)


def test_grid_cells_nobody_reads_are_skipped_and_every_clip_is_still_tested_once():
    """Speaker s reads only sentence s: most (speaker fold, sentence fold) cells are empty, and a
    row's cells after an empty one still make folds."""
    utts = [Utterance(f"s{s}", "x", LABELS[s % 4], f"t{s}", f"spk{s}", f"g{s}") for s in range(12)]
    cells = set()
    for seed in range(6):
        folds = make_folds(utts, "speaker-sentence", folds=3, seed=seed, valid="none")
        assert all(f.test and f.train for f in folds), seed
        assert Counter(i for f in folds for i in f.test) == Counter(u.id for u in utts), seed
        cells.add(len(folds))
    assert max(cells) < 9  # the layout does leave cells empty


def test_stratified_ratios_shape_the_sizes_and_must_sum_to_one():
    utts = grid(10, 20)  # 200 clips, 50 of each label
    (fold,) = make_folds(utts, "stratified", ratios=(0.7, 0.2, 0.1))
    sizes = (len(fold.train), len(fold.valid), len(fold.test))
    assert all(abs(n - want) <= 1 for n, want in zip(sizes, (140, 40, 20))), sizes  # sklearn rounds
    (none,) = make_folds(utts, "stratified", ratios=(0.7, 0.2, 0.1), valid="none")
    assert none.valid == [] and none.train == sorted(fold.train + fold.valid) and none.test == fold.test
    refused("split ratios must sum to 1, got (0.5, 0.5, 0.5)", utts, "stratified", ratios=(0.5, 0.5, 0.5))


def test_the_text_neutral_fold_trains_on_no_clip_of_a_tested_speaker_or_sentence():
    """A plain-script speaker also reads an emotional sentence, and an emotional speaker a plain
    one: no clip of either speaker trains (they share a voice with the test), the emotional
    sentence still trains when other speakers read it."""
    utts = [Utterance(f"e{s}{k}", "x", lab, f"emo {k}", f"emo{s}", f"emo-{k}") for s in range(6)
            for k, lab in enumerate(LABELS)]
    utts += [Utterance(f"p{s}{k}", "x", lab, "plain", f"plain{s}", "plain") for s in range(3)
             for k, lab in enumerate(LABELS)]
    utts += [Utterance("p0-emo", "x", "neutral", "emo 0", "plain0", "emo-0"),
             Utterance("e0-plain", "x", "sad", "plain", "emo0", "plain")]
    (fold,) = make_folds(utts, "text-neutral", valid="none")
    assert "e0-plain" in fold.test  # so speaker emo0 is a tested voice, and plain0 read emo-0
    assert sorted(fold.train) == sorted(f"e{s}{k}" for s in range(1, 6) for k in range(4))
    one_trainer = [u for u in utts if not u.speaker.startswith("emo") or u.speaker == "emo1"]
    (fold,) = make_folds(one_trainer, "text-neutral", valid="none")  # no hold-out to fail on
    assert sorted(fold.train) == ["e10", "e11", "e12", "e13"]
    refused("text-neutral protocol: every speaker reads a text-neutral sentence, so no speaker is left to "
            "train on; use the speaker protocol",
            [Utterance(f"{s}{k}", "x", lab, "t", f"spk{s}", "g") for s in range(2) for k, lab in enumerate(LABELS)],
            "text-neutral")
    refused("text-neutral protocol: no sentence is read in more than one emotion in this data",
            [u for u in utts if u.group != "plain"], "text-neutral")


@pytest.mark.parametrize("fraction,speakers", [(0.1, 1), (0.5, 3), (0.99, 5)])
def test_the_grid_validation_holds_exactly_its_share_of_speakers_and_one_sentence_per_emotion(fraction, speakers):
    """A 3 x 3 grid of 9 speakers and 12 sentences (3 per emotion) leaves 6 speakers and 2
    sentences of each emotion on a fold's training side: ceil(6 x fraction) speakers, at least 1
    and never all 6; round(2 x fraction) sentences of each emotion, at least 1 and never both."""
    utts = grid(9, 12)
    for seed in range(8):
        for fold in make_folds(utts, "speaker-sentence", folds=3, seed=seed, valid_fraction=fraction):
            valid = [u for u in utts if u.id in set(fold.valid)]
            per_label = Counter(u.label for u in {u.group: u for u in valid}.values())
            assert len({u.speaker for u in valid}) == speakers, (seed, fold.name)
            assert per_label == {lab: 1 for lab in LABELS}, (seed, fold.name, per_label)


def test_grid_validation_sentences_are_drawn_without_replacement():
    """Four training-side sentences per emotion at fraction 0.5: exactly two held out each time
    (with replacement the same sentence could be drawn twice, holding out one)."""
    utts = grid(9, 24)  # 6 sentences per emotion, 4 of them on a fold's training side
    for seed in range(10):
        for fold in make_folds(utts, "speaker-sentence", folds=3, seed=seed, valid_fraction=0.5):
            valid_groups = {u.group: u.label for u in utts if u.id in set(fold.valid)}
            assert Counter(valid_groups.values()) == {lab: 2 for lab in LABELS}, (seed, fold.name)


def test_dealing_balances_the_strata_and_shuffles_within_them():
    keys = [f"k{i}" for i in range(8)]
    strata = {k: "ab"[i % 2] for i, k in enumerate(keys)}  # interleaved by name: a b a b ...
    dealt = set()
    for seed in range(10):
        folds = _deal(keys, strata, 2, np.random.default_rng(seed))
        assert [sorted(strata[k] for k in f) for f in folds] == [["a", "a", "b", "b"]] * 2, seed
        dealt.add(tuple(sorted(folds[0])))
    assert len(dealt) > 2  # the seed, not the names, decides who goes together


def test_split_files_keep_korean_ids_readable(tmp_path):
    folds = make_folds([Utterance(f"화자{s}_{g}", "x", LABELS[g % 4], "t", f"s{s}", f"g{g}")
                        for s in range(4) for g in range(4)], "speaker", folds=3, valid="none")
    path = save_folds(tmp_path / "s.json", folds, {"seed": 0})
    text = path.read_text(encoding="utf-8")
    assert "화자0_0" in text and "\\u" not in text and text.splitlines()[1].startswith(' "seed"')
    assert load_folds(path) == folds


def test_a_recipes_split_section_passes_its_ratios():
    from koemo.config import SplitConfig
    from koemo.data.splits import folds_of

    (fold,) = folds_of(SplitConfig(protocol="stratified", ratios=[0.6, 0.2, 0.2]), grid(10, 20))
    assert abs(len(fold.test) - 40) <= 1 and abs(len(fold.train) - 120) <= 1


def test_refusals_are_word_for_word():
    utts = grid()
    refused("split.valid='inner': use one of holdout, none", utts, valid="inner")
    refused("unknown split protocol 'random'; known: stratified, speaker, sentence, speaker-sentence, text-neutral",
            utts, "random")
    refused("cannot split an empty manifest", [])
    refused("too few speakers or sentences to hold out a disjoint validation set",
            [Utterance(f"s{s}g{g}", "x", "sad", "t", f"spk{s}", f"g{g}") for s in range(3) for g in range(3)],
            "speaker-sentence", folds=2)
