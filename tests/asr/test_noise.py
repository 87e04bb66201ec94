"""Noise: measured SNR, reproducibility, babble made of other utterances, naming."""

import numpy as np
import pytest
import soundfile as sf

from koemo.asr.noise import (
    NoiseCondition,
    NoiseMaker,
    measured_snr,
    mix_at_snr,
    noise_condition,
    pink_noise,
    text_source,
    utterance_rng,
)
from koemo.data.audio import load_audio
from koemo.data.manifest import Utterance
from koemo.errors import KoemoError

from tests.conftest import tone


@pytest.fixture
def pool(tmp_path):
    """Eight 2 s 'utterances', two per sentence group, each a tone of its own pitch."""
    utts = []
    for i in range(8):
        path = tmp_path / f"u{i}.wav"
        sf.write(str(path), tone(2.0, freq=150.0 + 40 * i, seed=i), 16000)
        utts.append(Utterance(id=f"u{i}", audio=str(path), label="neutral", group=f"g{i // 2}"))
    return utts


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr", [20.0, 10.0, 5.0, 0.0, -5.0])
def test_measured_snr_within_half_a_db(pool, kind, snr):
    maker = NoiseMaker(NoiseCondition(kind, snr, seed=3), pool)
    clean = load_audio(pool[0].audio)
    noisy = maker.apply(pool[0], clean)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(measured_snr(clean, noisy) - snr) < 0.5


def test_loud_mixture_is_scaled_not_clipped_and_keeps_its_snr():
    clean = 0.9 * np.sin(np.linspace(0, 2000, 32000))
    noisy = mix_at_snr(clean, np.random.default_rng(0).standard_normal(32000), 0.0)
    assert np.max(np.abs(noisy)) <= 1.0
    assert abs(measured_snr(clean, noisy) - 0.0) < 0.5


def test_silence_stays_silent():
    assert not np.any(mix_at_snr(np.zeros(1000), np.ones(1000), 10.0))


def test_same_seed_same_noise_other_seed_other_noise(pool):
    clean = load_audio(pool[0].audio)
    a = NoiseMaker(NoiseCondition("babble", 5.0, seed=1), pool).apply(pool[0], clean)
    # Another pool order and another maker: the noise depends on (seed, utterance), not on order.
    b = NoiseMaker(NoiseCondition("babble", 5.0, seed=1), list(reversed(pool))).apply(pool[0], clean)
    c = NoiseMaker(NoiseCondition("babble", 5.0, seed=2), pool).apply(pool[0], clean)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_babble_mixes_other_utterances_of_other_sentences(pool):
    maker = NoiseMaker(NoiseCondition("babble", 0.0), pool, talkers=6)
    target = pool[0]  # group g0, shared with u1
    voices = maker._talkers_for(target, utterance_rng(0, target.id))
    assert len(voices) == 6  # the six utterances of other groups
    forbidden = [load_audio(u.audio) for u in pool[:2]]
    for voice in voices:
        assert not any(np.array_equal(voice, f) for f in forbidden)


def test_babble_needs_a_dataset():
    with pytest.raises(KoemoError, match="babble noise needs a dataset of at least 2 utterances"):
        NoiseMaker(NoiseCondition("babble", 0.0), [])


def test_pink_noise_falls_by_about_10_db_per_decade():
    noise = pink_noise(1 << 16, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.arange(power.size)
    band = (freqs > 10) & (freqs < 20000)
    slope = np.polyfit(np.log10(freqs[band]), 10 * np.log10(power[band]), 1)[0]
    assert -12 < slope < -8


def test_text_source_names():
    assert text_source("whisper-base") == "asr:whisper-base"
    assert text_source("vosk-ko", "babble", 0) == "asr:vosk-ko@babble-0db"
    assert text_source("whisper-base", "white", 2.5) == "asr:whisper-base@white-2.5db"
    assert text_source("whisper-base", "pink", -5, seed=1) == "asr:whisper-base@pink--5db-seed1"


def test_bad_noise_settings_say_what_is_wrong():
    with pytest.raises(KoemoError, match="unknown noise kind 'traffic'; known: white, pink, babble"):
        NoiseCondition("traffic", 10.0)
    with pytest.raises(KoemoError, match="noise needs both a kind"):
        noise_condition("babble", None)
    with pytest.raises(KoemoError, match="noise needs both a kind"):
        noise_condition(None, 10.0)
    with pytest.raises(KoemoError, match="finite number of dB"):
        NoiseCondition("white", float("nan"))
