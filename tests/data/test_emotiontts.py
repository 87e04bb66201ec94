"""The EmotionTTS loader on the real data, and its error handling on a broken copy."""

import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from koemo.data.loaders import LOADERS
from koemo.data.loaders.emotiontts import label_for_clip
from koemo.errors import BadInputError, SkipLog


def test_real_data_counts(emotiontts_utts):
    assert len(emotiontts_utts) == 300
    assert len({u.speaker for u in emotiontts_utts}) == 15
    assert Counter(u.label for u in emotiontts_utts) == {"neutral": 75, "happy": 75, "sad": 75, "angry": 75}
    assert 1500 < sum(u.duration for u in emotiontts_utts) < 1800


def test_corrected_label_map_on_known_sentences(emotiontts_utts):
    by_id = {u.id: u for u in emotiontts_utts}
    # The README says 002xx angry / 003xx sad; the sentences say otherwise.
    assert "마음이 아프다" in by_id["nea00201"].text and by_id["nea00201"].label == "sad"
    assert "억지 주장" in by_id["nea00301"].text and by_id["nea00301"].label == "angry"
    assert "꿈만 같아" in by_id["nea00101"].text and by_id["nea00101"].label == "happy"
    assert by_id["ema00001"].label == "neutral"


def test_sentence_groups(emotiontts_utts):
    by_id = {u.id: u for u in emotiontts_utts}
    # plain-to-emotional: one sentence read in four emotions
    assert by_id["ema00001"].group == by_id["ema00301"].group == by_id["emb00101"].group
    # emotional-to-emotional: the same script for every speaker
    assert by_id["nea00201"].group == by_id["neo00201"].group != by_id["nea00202"].group
    assert len({u.group for u in emotiontts_utts}) == 25


def test_label_for_clip_rejects_bad_names():
    with pytest.raises(BadInputError, match="outside the four emotion ranges"):
        label_for_clip("nea00501")
    with pytest.raises(BadInputError, match="not an EmotionTTS clip name"):
        label_for_clip("hello")


@pytest.fixture
def broken_copy(emotiontts_root, tmp_path):
    """One speaker copied, then damaged in every way the loader must survive."""
    src = emotiontts_root / "emotional-to-emotional" / "nea"
    dst = tmp_path / "db" / "emotional-to-emotional" / "nea"
    shutil.copytree(src, dst)
    (dst / "wav" / "nea00001.wav").write_bytes(b"RIFF garbage, not a wav")  # corrupt
    (dst / "transcript" / "nea00002.txt").unlink()  # missing transcript
    (dst / "transcript" / "nea00003.txt").write_bytes("슬픔".encode("cp949"))  # not UTF-8
    sf.write(str(dst / "wav" / "nea00004.wav"), np.zeros(16000, dtype=np.float32), 16000)  # silent
    sf.write(str(dst / "wav" / "nea00005.wav"), np.zeros(0, dtype=np.float32), 16000)  # zero-length
    return tmp_path / "db"


def test_bad_files_are_skipped_with_clear_messages(broken_copy):
    skips = SkipLog()
    utts = LOADERS.get("emotiontts")(broken_copy, skips)
    assert len(utts) == 15 and len(skips) == 5
    messages = {e.where.split("/")[-1]: e.problem for e in skips.skipped}
    assert messages["nea00001.wav"].startswith("not readable as audio")
    assert messages["nea00002.txt"] == "transcript file is missing"
    assert messages["nea00003.txt"].startswith("transcript is not UTF-8")
    assert messages["nea00004.wav"].startswith("audio is all silence")
    assert messages["nea00005.wav"] == "zero-length audio (no samples)"
    assert skips.summary(len(utts)) == "15 utterances kept, 5 skipped"
