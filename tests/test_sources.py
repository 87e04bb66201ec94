"""Text sources and training texts: every form parses and prints back; bad forms get one line."""

from __future__ import annotations

import pytest

from koemo.asr.noise import text_source
from koemo.errors import KoemoError
from koemo.sources import TextSource, TrainingText, source_name

CANONICAL = [
    ("gold", TextSource()),
    ("asr:whisper-base", TextSource("whisper-base")),
    ("asr:vosk-ko@babble-5db", TextSource("vosk-ko", "babble", 5.0)),
    ("asr:whisper-base@white--2.5db", TextSource("whisper-base", "white", -2.5)),
    ("asr:whisper-base@pink-0db-seed3", TextSource("whisper-base", "pink", 0.0, 3)),
    ("asr:whisper:/models/ko-ct2", TextSource("whisper:/models/ko-ct2")),
]


@pytest.mark.parametrize("name, source", CANONICAL)
def test_every_form_parses_and_prints_back(name, source):
    assert TextSource.parse(name) == source
    assert str(source) == name == source_name(f"  {name} ")


def test_asr_noise_names_its_columns_through_the_value_type():
    assert text_source("whisper-base", "babble", 5) == "asr:whisper-base@babble-5db"
    assert text_source("vosk-ko", "white", -2.5, 3) == "asr:vosk-ko@white--2.5db-seed3"
    assert text_source("vosk-ko") == "asr:vosk-ko"
    assert TextSource.parse("asr:vosk-ko@white--2.5db-seed3").transcribe_command() == \
        "koemo transcribe --backend vosk-ko --noise white --snr -2.5 --seed 3"
    assert TextSource.parse("asr:b").transcribe_command() == "koemo transcribe --backend b"


@pytest.mark.parametrize("bad", ["", "Gold", "asr:", "asr", "whisper-base", "asr:b@babble", "asr:b@babble-5",
                                 "asr:b@-5db", "asr:b@Babble-5db", "asr:b@babble-5db-seed", "asr:b@babble-5db-x",
                                 "asr:@babble-5db", "asr:b c", "cr:whisper-base", "asr:b@babble-nandb"])
def test_bad_forms_are_one_line_errors(bad):
    with pytest.raises(KoemoError) as e:
        TextSource.parse(bad)
    assert "\n" not in str(e.value) and repr(bad) in str(e.value)


def test_inconsistent_values_are_refused():
    with pytest.raises(KoemoError, match="needs both a kind"):
        TextSource("b", "babble", None)
    with pytest.raises(KoemoError, match="gold text source has no noise"):
        TextSource(None, "babble", 5.0)
    with pytest.raises(KoemoError, match="finite"):
        TextSource("b", "babble", float("inf"))
    with pytest.raises(KoemoError, match="seed needs a noise"):
        TextSource("b", seed=2)


def test_training_texts():
    assert TrainingText.parse("gold") == TrainingText("gold")
    asr = TrainingText.parse("asr:whisper-base")
    assert asr.mode == "asr" and asr.train_sources == ["asr:whisper-base"] and asr.service_source == "asr:whisper-base"
    cr = TrainingText.parse("cr:whisper-base")
    assert cr == TrainingText.parse("cr:asr:whisper-base") and str(cr) == "cr:asr:whisper-base"
    assert cr.train_sources == ["gold", "asr:whisper-base"] and cr.service_source == "asr:whisper-base"
    noisy = TrainingText.parse("cr:asr:vosk-ko@babble-0db")
    assert str(noisy.stt) == "asr:vosk-ko@babble-0db"
    assert TrainingText.parse("gold").train_sources == ["gold"] == [TrainingText.parse("gold").service_source]
    for bad in ("whisper", "cr:", "asr:", "cr:asr:b@x", " "):
        with pytest.raises(KoemoError, match="training text must be gold"):
            TrainingText.parse(bad)
