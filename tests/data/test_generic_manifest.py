"""A user's own CSV manifest (the way KEMDy19/20 come in)."""

from koemo.data.loaders import LOADERS
from koemo.errors import SkipLog


def test_generic_manifest(tmp_path, write_wav):
    write_wav("clips/a.wav")
    write_wav("clips/b.wav", seconds=2.0)
    write_wav("clips/c.wav")
    (tmp_path / "clips" / "broken.wav").write_bytes(b"nope")
    manifest = tmp_path / "my.csv"
    manifest.write_text(
        "audio,text,label,speaker\n"
        "clips/a.wav,정말 기뻐요,Happiness,s1\n"
        "clips/b.wav,슬퍼요,슬픔,s2\n"
        "clips/broken.wav,뭐,neutral,s1\n"
        "clips/a.wav,,happy,s1\n"
        "clips/c.wav,그래,bored,s2\n",
        encoding="utf-8",
    )
    skips = SkipLog()
    utts = LOADERS.get("manifest")(manifest, skips)
    assert [(u.id, u.label, u.speaker, u.group) for u in utts] == [
        ("a", "happy", "s1", "정말 기뻐요"), ("b", "sad", "s2", "슬퍼요")]
    assert utts[1].duration == 2.0 and utts[0].audio == str(tmp_path / "clips" / "a.wav")
    problems = [str(e) for e in skips.skipped]
    assert len(problems) == 3  # broken audio, duplicate id 'a' (empty text row), unknown label
    assert any(p.endswith("broken.wav: not readable as audio (Invalid data found when processing input)")
               for p in problems)
    assert any("duplicate utterance id 'a'" in p for p in problems)
    assert any("unknown emotion label 'bored'" in p and "my.csv#c" in p for p in problems)
