import pytest

from koemo.data.manifest import Utterance, read_manifest, write_manifest
from koemo.errors import BadInputError, KoemoError, SkipLog


def _utts():
    return [
        Utterance(id="a", audio="/x/a.wav", label="happy", text="좋아요, 정말", speaker="s1", group="g1",
                  duration=1.5, transcripts={"asr:whisper-base": "좋아요 정말"}),
        Utterance(id="b", audio="/x/b.wav", label="sad", text="슬퍼", speaker="s2", group="g2", start=1.0, end=2.0),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_roundtrip(tmp_path, suffix):
    path = write_manifest(tmp_path / f"m{suffix}", _utts())
    back = read_manifest(path)
    assert back == _utts()
    assert back[0].text_for("asr:whisper-base") == "좋아요 정말"
    assert back[0].text_for("gold") == "좋아요, 정말"


def test_missing_transcript_source_says_how_to_make_it():
    with pytest.raises(BadInputError, match="b: no 'asr:vosk-ko' transcript; run: koemo transcribe --backend vosk-ko"):
        _utts()[1].text_for("asr:vosk-ko")


def test_rows_missing_columns_are_skipped(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,audio,label,text\na,/x/a.wav,happy,hi\nb,,sad,hi\nc,/x/c.wav,,hi\n", encoding="utf-8")
    skips = SkipLog()
    utts = read_manifest(path, skips)
    assert [u.id for u in utts] == ["a"]
    assert [str(e) for e in skips.skipped] == [
        f"{path}:3: row is missing required column(s): audio",
        f"{path}:4: row is missing required column(s): label",
    ]


def test_duplicate_ids_and_bad_numbers(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id":"a","audio":"x","label":"sad"}\n{"id":"a","audio":"y","label":"sad"}\n'
                    '{"id":"c","audio":"y","label":"sad","duration":"long"}\nnot json\n', encoding="utf-8")
    skips = SkipLog()
    assert len(read_manifest(path, skips)) == 1
    problems = [e.problem for e in skips.skipped]
    assert "invalid JSON" in problems[0]
    assert "duplicate utterance id 'a'" in problems[1]
    assert "column duration is not a number" in problems[2]


def test_non_utf8_manifest(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("id,audio,label\na,x,슬픔\n".encode("cp949"))
    with pytest.raises(BadInputError, match=r"m\.csv: not UTF-8 text"):
        read_manifest(path)


def test_missing_manifest_names_command(tmp_path):
    with pytest.raises(KoemoError, match="koemo data prepare"):
        read_manifest(tmp_path / "nope.jsonl")
