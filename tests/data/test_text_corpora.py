from collections import Counter


from koemo.data.labels import LABEL_SETS
from koemo.data.text_corpora import load_aihub263, load_single_turn, load_text_corpora
from koemo.errors import SkipLog
from koemo.paths import data_dir


def test_real_corpora_load():
    skips = SkipLog()
    examples = load_text_corpora(data_dir() / "korean_emotion_text", skips)
    labels = Counter(e.label for e in examples)
    assert set(labels) <= set(LABEL_SETS["korean-text7"]) and len(labels) == 7
    assert len(examples) > 40000
    by_source = Counter(e.source for e in examples)
    assert by_source["single_turn_dialogue.csv"] > 38000  # CP949 file decoded
    assert all(e.text.strip() for e in examples)


def test_cp949_and_majority(tmp_path):
    st = tmp_path / "single_turn_dialogue.csv"
    st.write_bytes("Sentence,Emotion\n너무 기뻐,행복\n,슬픔\n왜,지루함\n".encode("cp949"))
    skips = SkipLog()
    assert [(e.text, e.label) for e in load_single_turn(st, skips)] == [("너무 기뻐", "happy")]
    assert [e.problem for e in skips.skipped] == [
        "empty sentence", "unknown emotion label '지루함' (known: happy, surprise, angry, sad, dislike, fear, contempt, neutral)"]

    ah = tmp_path / "aihub263_x.csv"
    header = "wav_id,발화문," + ",".join(f"{i}번 감정" for i in range(1, 6))
    ah.write_text(f"{header}\na,화나,Angry,angry,Neutral,anger,Sadness\nb,음,Angry,Angry,Sadness,Sadness,Neutral\n",
                  encoding="utf-8")
    skips = SkipLog()
    assert [(e.id, e.label) for e in load_aihub263(ah, skips)] == [("a", "angry")]
    assert "annotators tie" in skips.skipped[0].problem


def test_exclude_and_undecodable(tmp_path):
    (tmp_path / "single_turn_dialogue.csv").write_text("Sentence,Emotion\n가,행복\n나,슬픔\n", encoding="utf-8")
    assert [e.text for e in load_text_corpora(tmp_path, SkipLog(), exclude_texts={" 가 "})] == ["나"]
    bad = tmp_path / "other.csv"
    bad.write_bytes(b"Sentence,Emotion\n\xff\xfe\xfa\xfb,\x80\n")
    skips = SkipLog()
    load_text_corpora(tmp_path, skips)
    assert any("other.csv: text file is neither UTF-8 nor CP949" in str(e) for e in skips.skipped)
