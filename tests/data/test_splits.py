from collections import Counter

import pytest

from koemo.data.manifest import Utterance
from koemo.data.splits import leakage, load_folds, make_folds, save_folds
from koemo.errors import KoemoError


def test_stratified_ratios_and_determinism(emotiontts_utts):
    (fold,) = make_folds(emotiontts_utts, "stratified", seed=1)
    assert (len(fold.train), len(fold.valid), len(fold.test)) == (240, 30, 30)
    labels = Counter(u.label for u in emotiontts_utts if u.id in set(fold.test))
    assert max(labels.values()) - min(labels.values()) <= 1  # stratified
    assert make_folds(emotiontts_utts, "stratified", seed=1) == [fold]
    assert make_folds(emotiontts_utts, "stratified", seed=2)[0].test != fold.test
    # order of the input never matters
    assert make_folds(list(reversed(emotiontts_utts)), "stratified", seed=1) == [fold]


@pytest.mark.parametrize("protocol,attr", [("speaker", "speaker"), ("sentence", "group")])
def test_group_kfold_is_disjoint_and_covers_everything(emotiontts_utts, protocol, attr):
    by_id = {u.id: u for u in emotiontts_utts}
    folds = make_folds(emotiontts_utts, protocol, folds=3, seed=0)
    tested = Counter(i for f in folds for i in f.test)
    assert set(tested) == set(by_id) and set(tested.values()) == {1}
    for f in folds:
        test_keys = {getattr(by_id[i], attr) for i in f.test}
        train_keys = {getattr(by_id[i], attr) for i in f.train}
        valid_keys = {getattr(by_id[i], attr) for i in f.valid}
        assert not test_keys & train_keys and not test_keys & valid_keys and not valid_keys & train_keys
        assert set(f.train) | set(f.valid) | set(f.test) == set(by_id)


def test_speaker_sentence_grid(emotiontts_utts):
    folds = make_folds(emotiontts_utts, "speaker-sentence", folds=3, seed=4)
    tested = Counter(i for f in folds for i in f.test)
    assert len(tested) == 300 and set(tested.values()) == {1}
    by_id = {u.id: u for u in emotiontts_utts}
    for f in folds:
        leak = leakage(emotiontts_utts, f)
        assert leak["test_speaker_seen"] == 0 and leak["test_sentence_seen"] == 0
        assert len(f.train) > 50 and f.valid
        # validation mirrors the test condition: no speaker and no sentence shared with training
        train_spk = {by_id[i].speaker for i in f.train}
        train_grp = {by_id[i].group for i in f.train}
        assert not any(by_id[i].speaker in train_spk or by_id[i].group in train_grp for i in f.valid)
        assert not set(f.valid) & set(f.test)
    assert make_folds(emotiontts_utts, "speaker-sentence", folds=3, seed=4) == folds
    assert make_folds(emotiontts_utts, "speaker-sentence", folds=3, seed=5) != folds


def test_stratified_split_leaks_on_emotiontts(emotiontts_utts):
    (fold,) = make_folds(emotiontts_utts, "stratified", seed=0)
    leak = leakage(emotiontts_utts, fold)
    assert leak["test_sentence_seen"] == leak["test"]  # why it is not the main protocol


def test_save_and_load(tmp_path, emotiontts_utts):
    folds = make_folds(emotiontts_utts, "speaker", folds=3, seed=0)
    path = save_folds(tmp_path / "s.json", folds, {"seed": 0})
    assert load_folds(path) == folds


def test_errors():
    utts = [Utterance(id=str(i), audio="x", label="sad", speaker="only", group=str(i)) for i in range(5)]
    with pytest.raises(KoemoError, match="needs at least 4 speakers, the data has 1"):
        make_folds(utts, "speaker", folds=3)
    with pytest.raises(KoemoError, match="empty manifest"):
        make_folds([], "speaker")
    with pytest.raises(KoemoError, match="unknown split protocol 'random'"):
        make_folds(utts, "random")


def _layout():
    """Six emotional-script speakers reading sentences of one emotion each, three plain-script
    speakers reading two sentences in every emotion (EmotionTTS in small)."""
    from koemo.data.manifest import Utterance

    labels = ["neutral", "happy", "sad", "angry"]
    utts = []
    for s in range(6):
        for k, lab in enumerate(labels):
            for j in range(2):
                utts.append(Utterance(f"e{s}{k}{j}", "x", lab, f"emo {k} {j}", f"emo{s}", f"emo-{k}{j}"))
    for s in range(3):
        for k, lab in enumerate(labels):
            for j in range(2):
                utts.append(Utterance(f"p{s}{k}{j}", "x", lab, f"plain {j}", f"plain{s}", f"plain-{j}"))
    return utts


def test_text_neutral_protocol_tests_the_sentences_read_in_every_emotion():
    from koemo.data.splits import make_folds, text_neutral_ids

    utts = _layout()
    neutral = text_neutral_ids(utts)
    assert neutral == {u.id for u in utts if u.id.startswith("p")}
    (fold,) = make_folds(utts, "text-neutral", seed=3)
    assert fold.name == "text-neutral" and set(fold.test) == neutral
    by_id = {u.id: u for u in utts}
    train_side = fold.train + fold.valid
    assert not {by_id[i].speaker for i in train_side} & {by_id[i].speaker for i in fold.test}
    assert not {by_id[i].group for i in train_side} & {by_id[i].group for i in fold.test}
    assert fold.valid and not set(fold.valid) & set(fold.train)
    only_emotional = [u for u in utts if u.id.startswith("e")]
    with pytest.raises(KoemoError, match="no sentence is read in more than one emotion"):
        make_folds(only_emotional, "text-neutral")


def test_without_validation_every_training_side_clip_trains():
    from koemo.data.splits import make_folds

    utts = _layout()
    none = make_folds(utts, "speaker-sentence", folds=3, seed=1, valid="none")
    held = make_folds(utts, "speaker-sentence", folds=3, seed=1, valid_fraction=0.3)
    by_id = {u.id: u for u in utts}
    assert [f.test for f in none] == [f.test for f in held]
    for f, h in zip(none, held):  # the whole training side, more than train + validation with a hold-out
        spk, grp = {by_id[i].speaker for i in f.test}, {by_id[i].group for i in f.test}
        assert f.valid == [] and not any(by_id[i].speaker in spk or by_id[i].group in grp for i in f.train)
        assert set(h.train + h.valid) < set(f.train)
    held = make_folds(utts, "speaker", folds=3, seed=1)
    assert [f.test for f in make_folds(utts, "speaker", folds=3, seed=1, valid="none")] == [f.test for f in held]
    with pytest.raises(KoemoError, match="split.valid='inner'"):
        make_folds(utts, "speaker", valid="inner")


def _speakers(n_speakers: int, labels=("neutral", "happy", "sad"), clips: int = 2):
    """Speakers who each read in one emotion (speaker i: label i mod len(labels)); sentences shared."""
    return [Utterance(f"s{s}c{c}", "x", labels[s % len(labels)], f"t{c}", f"spk{s}", f"g{c}")
            for s in range(n_speakers) for c in range(clips)]


def test_speaker_folds_hold_out_one_speaker_of_each_emotion_for_every_seed():
    """The speakers of a fold are dealt label stratum by stratum: with two speakers per emotion
    and two folds, each fold tests one speaker of each emotion, whatever the seed."""
    utts = _speakers(6)
    label_of = {u.speaker: u.label for u in utts}
    for seed in range(12):
        for fold in make_folds(utts, "speaker", folds=2, seed=seed, valid="none"):
            held = {u.speaker for u in utts if u.id in set(fold.test)}
            assert sorted(label_of[s] for s in held) == ["happy", "neutral", "sad"], (seed, held)


@pytest.mark.parametrize("n_speakers,fraction,expected", [(6, 0.15, 1), (6, 0.5, 3), (4, 0.9, 3)])
def test_the_validation_set_holds_exactly_its_share_of_speakers(n_speakers, fraction, expected):
    """ceil(training speakers x fraction) speakers, at least one and never all of them, drawn
    without replacement (k = 2 folds leave half of the speakers, or two of four, for training)."""
    utts = _speakers(n_speakers * 2)
    for seed in range(8):
        for fold in make_folds(utts, "speaker", folds=2, seed=seed, valid_fraction=fraction):
            valid = {u.speaker for u in utts if u.id in set(fold.valid)}
            train = {u.speaker for u in utts if u.id in set(fold.train)}
            assert len(valid) == expected and len(train) == n_speakers - expected, (seed, valid)


def test_the_disjoint_validation_set_holds_exactly_its_share_of_speakers_and_sentences():
    utts = [Utterance(f"s{s}g{g}", "x", ("neutral", "sad")[g % 2], f"t{g}", f"spk{s}", f"g{g}")
            for s in range(9) for g in range(12)]  # each sentence in one emotion: 2 strata of 6
    for seed in range(8):
        for fold in make_folds(utts, "speaker-sentence", folds=3, seed=seed, valid_fraction=0.2):
            valid = [u for u in utts if u.id in set(fold.valid)]
            # 6 training-side speakers x 0.2 -> 2; per stratum: 4 training-side sentences of an
            # emotion x 0.2 -> round(0.8) = 1 sentence per emotion
            assert len({u.speaker for u in valid}) == 2, seed
            assert len({u.group for u in valid}) == 2 and {u.label for u in valid} == {"neutral", "sad"}, seed


def test_split_errors_say_what_is_missing():
    with pytest.raises(KoemoError, match="2-fold speaker split needs at least 3 speakers, the data has 2"):
        make_folds(_speakers(2), "speaker", folds=2)
    make_folds(_speakers(3), "speaker", folds=2, valid="none")  # three speakers are enough for two folds
    nameless = [Utterance("a", "x", "sad", "t", "", "g1"), Utterance("b", "x", "sad", "t", "s", "g2")]
    with pytest.raises(KoemoError, match="some utterances have no speaker; a speaker-disjoint split needs it"):
        make_folds(nameless, "speaker", folds=2)
    with pytest.raises(KoemoError, match="cannot hold out a validation speaker: only 1 in training"):
        make_folds(_speakers(3), "speaker", folds=2)  # a fold keeps one training speaker
    with pytest.raises(KoemoError, match="too few speakers or sentences to hold out a disjoint validation set"):
        make_folds([Utterance(f"s{s}g{g}", "x", "sad", "t", f"spk{s}", f"g{g}") for s in range(3) for g in range(3)],
                   "speaker-sentence", folds=2)  # a fold left with one training sentence cannot hold it out


def test_a_sentence_read_in_two_emotions_carries_no_label():
    from koemo.data.splits import text_neutral_ids

    utts = [Utterance("a", "x", "sad", "t", "s1", "g"), Utterance("b", "x", "happy", "t", "s2", "g"),
            Utterance("c", "x", "sad", "u", "s1", "h"), Utterance("d", "x", "sad", "u", "s2", "h")]
    assert text_neutral_ids(utts) == {"a", "b"}


def test_split_files_are_named_by_everything_that_makes_them_and_a_recipe_section_makes_folds():
    from koemo.config import SplitConfig
    from koemo.data.splits import folds_of, split_path

    base = "data/m.jsonl"
    assert str(split_path(base, "speaker", 3, 1)) == "data/splits/m.speaker-k3.seed1.json"
    assert str(split_path(base, "speaker-sentence", 5, 0, "none")) == "data/splits/m.speaker-sentence-k5-valid-none.seed0.json"
    assert str(split_path(base, "stratified", 3, 2)) == "data/splits/m.stratified.seed2.json"
    assert str(split_path(base, "text-neutral", 5, 2)) == "data/splits/m.text-neutral.seed2.json"
    utts = _speakers(6, clips=4)  # 6 speakers, 4 sentences
    split = SplitConfig(protocol="speaker", folds=3, seed=4, valid="none")
    assert folds_of(split, utts) == make_folds(utts, "speaker", folds=3, seed=4, valid="none")
    assert folds_of(split, utts, seed=5) == make_folds(utts, "speaker", folds=3, seed=5, valid="none")
    assert folds_of(split, utts, protocol="sentence") == make_folds(utts, "sentence", folds=3, seed=4, valid="none")
    assert folds_of(split, utts) != folds_of(split, utts, seed=5)
