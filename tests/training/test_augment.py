"""Audio augmentation: reproducible copies, each transform doing what it says, keyed in the store."""

from __future__ import annotations

import numpy as np
import pytest

from koemo.config import AugmentConfig
from koemo.data.manifest import Utterance
from koemo.errors import KoemoError
from koemo.training.augment import AudioTransform, check, mask_frames, masked_copies
from tests.conftest import tone

UTT = Utterance("u1", "x.wav", "happy", "문장", "spk", "g1")
POOL = (UTT, Utterance("u2", "y.wav", "sad", "다른", "spk", "g2"))


def test_each_transform_is_reproducible_and_changes_the_audio():
    audio = tone(2.0)
    speed = AudioTransform(AugmentConfig(copies=1, speed=[1.2, 1.2]), 0)
    faster = speed(UTT, audio)
    assert len(faster) == pytest.approx(len(audio) / 1.2, rel=0.01)
    np.testing.assert_array_equal(faster, speed(UTT, audio))
    louder = AudioTransform(AugmentConfig(copies=1, volume_db=[6.0, 6.0]), 0)(UTT, audio)
    assert np.abs(louder).max() == pytest.approx(min(1.0, np.abs(audio).max() * 10 ** 0.3), rel=1e-3)
    noisy = AudioTransform(AugmentConfig(copies=2, noise="white", snr=[10.0, 10.0]), 0)(UTT, audio)
    snr = 10 * np.log10(np.sum(audio ** 2) / np.sum((noisy - audio) ** 2))
    assert snr == pytest.approx(10.0, abs=0.5)
    other = AudioTransform(AugmentConfig(copies=2, noise="white", snr=[10.0, 10.0]), 1)(UTT, audio)
    assert not np.allclose(noisy, other)  # copy 1 is another draw
    assert AudioTransform(AugmentConfig(copies=2, noise="white"), 0).key != \
        AudioTransform(AugmentConfig(copies=2, noise="white"), 1).key


def test_bad_settings_are_refused():
    for cfg, msg in ((AugmentConfig(copies=1), "needs a transform"), (AugmentConfig(speed=[1.1, 0.9]), "low, high"),
                     (AugmentConfig(frame_mask=1.0), "frame_mask"), (AugmentConfig(speed=[0.0, 1.0]), "positive"),
                     (AugmentConfig(corpus_normalised=2), "corpus_normalised"),
                     (AugmentConfig(mixed_groups=-1), "mixed_groups")):
        with pytest.raises(KoemoError, match=msg):
            check(cfg)


def test_frame_masking_keeps_a_share_and_at_least_one_frame():
    rng = np.random.default_rng(0)
    x = np.arange(1000, dtype=np.float32)[:, None]
    kept = mask_frames(x, 0.3, rng)
    assert 600 < len(kept) < 800 and set(kept[:, 0]) <= set(x[:, 0])
    assert len(mask_frames(x[:1], 0.99, rng)) == 1
    copies = masked_copies([{"a": x}], 0.5, seed=1)
    np.testing.assert_array_equal(copies[0]["a"], masked_copies([{"a": x}], 0.5, seed=1)[0]["a"])


def test_the_store_keys_copies_by_their_transform(tmp_path, write_wav):
    from koemo.encoders.store import FeatureStore
    from tests.experiments.test_reproduce import BandEnergy  # noqa: F401  (registers band-energy)

    wav = write_wav("a.wav", seconds=1.0)
    utt = Utterance("a", str(wav), "happy", "x", "s", "g")
    store = FeatureStore(tmp_path / "features")
    clean = store.speech("band-energy", [utt], progress=False)["a"]
    t = AudioTransform(AugmentConfig(copies=1, volume_db=[-20.0, -20.0]), 0)
    quiet = store.speech("band-energy", [utt], progress=False, transform=t)["a"]
    assert store.extracted == 1 and not np.allclose(clean, quiet)
    again = store.speech("band-energy", [utt], progress=False, transform=t)["a"]
    assert store.extracted == 0 and np.array_equal(again, quiet)


def test_a_corpus_normalised_copy_is_each_clip_under_the_corpus_statistics():
    """augment.corpus_normalised: one more training copy of every clip, standardised by the whole
    corpus's statistics (what a request without a session gets), beside the speaker-normalised one."""
    from koemo.config import Recipe, from_dict
    from koemo.fusion.inputs import Moments
    from koemo.training.features import speech_input

    rng = np.random.default_rng(0)
    utts = [Utterance(f"u{i}", "x.wav", "happy", "", f"spk{i % 2}", "g") for i in range(6)]
    frames = {u.id: (rng.standard_normal((5, 3)) + 4 * (int(u.speaker[-1]))).astype(np.float32) for u in utts}
    recipe = from_dict(Recipe, {"encoders": {"normalise": "speaker"}, "model": {"fusion": "linear"},
                               "augment": {"corpus_normalised": 1}})
    clean, variants, spec = speech_input(recipe, frames, utts)
    assert len(variants) == 1
    mean, sd = Moments.sum(Moments.of(a) for a in frames.values()).mean_sd()
    for u in utts:
        x = (frames[u.id] - mean) / sd
        want = np.concatenate([x.mean(0), x.std(0)])[None]
        np.testing.assert_allclose(variants[0][u.id].astype(np.float32), want, atol=2e-2)
        assert not np.allclose(clean[u.id].astype(np.float32), want, atol=0.1)  # the speaker's statistics
    off = from_dict(Recipe, {"encoders": {"normalise": "speaker"}, "model": {"fusion": "linear"}})
    assert speech_input(off, frames, utts)[1] == []


def test_mixed_groups_deal_whole_speakers_into_groups_of_k():
    from koemo.training.features import mixed_groups

    speakers = {f"u{i}": f"spk{i % 5}" for i in range(20)}
    groups = mixed_groups(speakers, 2, seed=0)
    assert all(groups[u] == groups[v] for u in speakers for v in speakers if speakers[u] == speakers[v])
    members: dict[str, set] = {}
    for u, g in groups.items():
        members.setdefault(g, set()).add(speakers[u])
    assert sorted(len(m) for m in members.values()) == [1, 2, 2]
    assert groups == mixed_groups(speakers, 2, seed=0)
    assert any(mixed_groups(speakers, 2, seed=s) != groups for s in range(1, 5))  # the seed deals anew


def test_a_mixed_group_copy_is_each_clip_under_its_groups_statistics():
    """augment.mixed_groups: one more training copy, each clip standardised by the statistics of
    its speaker and the others dealt into its group (a folder of several speakers in service)."""
    from koemo.config import Recipe, from_dict
    from koemo.fusion.inputs import Moments
    from koemo.training.features import mixed_groups, speech_input

    rng = np.random.default_rng(0)
    utts = [Utterance(f"u{i}", "x.wav", "happy", "", f"spk{i % 4}", "g") for i in range(16)]
    frames = {u.id: (rng.standard_normal((5, 3)) + 4 * int(u.speaker[-1])).astype(np.float32) for u in utts}
    recipe = from_dict(Recipe, {"encoders": {"normalise": "speaker"}, "model": {"fusion": "linear"},
                               "augment": {"mixed_groups": 2, "seed": 3}})
    clean, variants, _ = speech_input(recipe, frames, utts)
    assert len(variants) == 1
    groups = mixed_groups({u.id: u.speaker for u in utts}, 2, seed=3)
    for u in utts:
        mates = [v for v in frames if groups[v] == groups[u.id]]
        assert len({w.speaker for w in utts if w.id in mates}) == 2
        mean, sd = Moments.sum(Moments.of(frames[v]) for v in mates).mean_sd()
        x = (frames[u.id] - mean) / sd
        want = np.concatenate([x.mean(0), x.std(0)])[None]
        np.testing.assert_allclose(variants[0][u.id].astype(np.float32), want, atol=2e-2)
        assert not np.allclose(clean[u.id].astype(np.float32), want, atol=0.1)  # the speaker's own statistics


def test_a_bad_group_size_is_refused_word_for_word_and_the_card_names_the_views():
    from koemo.config import Recipe, from_dict
    from koemo.training.card import _augment

    with pytest.raises(KoemoError) as e:
        check(AugmentConfig(mixed_groups=-1))
    assert str(e.value) == "augment.mixed_groups must be 0 (off) or a number of speakers, got -1"
    recipe = from_dict(Recipe, {"augment": {"mixed_groups": 3, "corpus_normalised": 1}})
    assert _augment(recipe) == ("a copy normalised by the corpus statistics, "
                                "a copy normalised by random groups of 3 speakers")
    assert _augment(from_dict(Recipe, {})) == "none"


def test_a_channel_copy_is_reproducible_keyed_and_refused_out_of_range():
    audio = tone(2.0)
    t = AudioTransform(AugmentConfig(copies=1, channel=1.0), 0)
    coloured = t(UTT, audio)
    np.testing.assert_array_equal(coloured, t(UTT, audio))
    assert not np.allclose(coloured, audio) and coloured.size == audio.size
    np.testing.assert_array_equal(AudioTransform(AugmentConfig(copies=1, channel=0.0, volume_db=[0.0, 0.0]), 0)(UTT, audio),
                                  audio)  # off: untouched
    # the store keys it apart, and a recipe without it keeps the key its copies had before
    assert "channel=1.0" in t.key and "channel" not in AudioTransform(AugmentConfig(copies=1, noise="white"), 0).key
    check(AugmentConfig(copies=1, channel=0.5))  # a transform on its own
    with pytest.raises(KoemoError, match="augment.channel"):
        check(AugmentConfig(copies=1, channel=1.5))


def test_the_channel_switch_leaves_old_fingerprints_alone_and_changes_new_ones():
    """A recipe with augmentation but no channel trains under the fingerprint it had before the
    field existed (its cached grid stays valid); with a channel it is another run."""
    import dataclasses

    from koemo.config import Recipe
    from koemo.data.splits import Fold
    from koemo.training.trainer import _fingerprint

    fold = Fold("f", ["a"], [], ["b"])
    cfg = dataclasses.asdict(Recipe())
    cfg["augment"].update(mixed_groups=3, copies=1, noise="babble")
    old = {**cfg, "augment": {k: v for k, v in cfg["augment"].items() if k != "channel"}}
    assert _fingerprint(cfg, fold, "data", 1) == _fingerprint(old, fold, "data", 1)
    coloured = {**cfg, "augment": {**cfg["augment"], "channel": 1.0}}
    assert _fingerprint(coloured, fold, "data", 1) != _fingerprint(cfg, fold, "data", 1)


def test_speech_layers_leave_layers_out_of_every_view_and_the_bundle_records_it():
    """encoders.speech_layers: the clean view and every copy hold only the layers asked for (after
    each speaker's statistics standardised them all), and the spec a bundle stores says which."""
    from koemo.config import Recipe, from_dict
    from koemo.training.features import speech_input

    rng = np.random.default_rng(1)
    utts = [Utterance(f"u{i}", "x.wav", "happy", "", f"spk{i % 3}", "g") for i in range(9)]
    frames = {u.id: rng.standard_normal((6, 4, 3)).astype(np.float32) for u in utts}
    base = {"encoders": {"normalise": "speaker", "speech_layer": "all"}, "model": {"fusion": "linear"},
            "augment": {"mixed_groups": 2}}
    whole, whole_copies, _ = speech_input(from_dict(Recipe, base), frames, utts)
    some = from_dict(Recipe, {**base, "encoders": {**base["encoders"], "speech_layers": [3, 0]}})
    clean, copies, spec = speech_input(some, frames, utts)
    assert clean["u4"].shape == (1, 2, 6) and copies[0]["u4"].shape == (1, 2, 6)
    np.testing.assert_array_equal(clean["u4"], whole["u4"][:, [3, 0]])
    np.testing.assert_array_equal(copies[0]["u4"], whole_copies[0]["u4"][:, [3, 0]])
    assert spec.meta()["layers"] == [3, 0] and "layers" not in speech_input(from_dict(Recipe, base), frames, utts)[2].meta()
