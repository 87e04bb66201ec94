"""The feature store: miss -> extract, hit, resume after an interruption, keys, text sources, CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from koemo.encoders.store import FeatureStore
from koemo.errors import BadInputError, SkipLog
from koemo.paths import cache_root


@pytest.fixture
def utts(emotiontts_utts):
    return [dataclasses.replace(u, transcripts=dict(u.transcripts)) for u in emotiontts_utts[:3]]


def test_speech_miss_hit_and_memory_mapped(utts):
    store = FeatureStore()
    assert store.root == cache_root() / "features"
    first = store.speech("mfcc", utts)
    assert (store.hits, store.extracted) == (0, 3)
    again = FeatureStore().speech("mfcc", utts)
    assert list(again) == [u.id for u in utts]
    for u in utts:
        a = again[u.id]
        assert isinstance(a, np.memmap) and a.dtype == np.float16
        assert a.shape == (1 + round(u.duration * 16000) // 160, 120) or abs(a.shape[0] - u.duration * 100) <= 2
        assert np.array_equal(np.asarray(a), np.asarray(first[u.id]))
    store2 = FeatureStore()
    store2.speech("mfcc", utts)
    assert (store2.hits, store2.extracted) == (3, 0)


def test_resume_after_interruption(utts, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file" * 10)
    bad = dataclasses.replace(utts[1], id="broken", audio=str(corrupt))
    store = FeatureStore()
    with pytest.raises(BadInputError, match="broken"):
        store.speech("mfcc", [utts[0], bad, utts[2]])
    # the first utterance was written before the failure; nothing half-written is left
    folder = next((store.root / "speech").glob("mfcc-*"))
    assert len(list(folder.glob("*/*.npy"))) == 1
    assert not list(folder.rglob("*.tmp"))
    skips = SkipLog()
    got = store.speech("mfcc", [utts[0], bad, utts[2]], skips=skips)
    assert set(got) == {utts[0].id, utts[2].id} and len(skips) == 1 and "broken" in str(skips.skipped[0])
    assert (store.hits, store.extracted) == (1, 1)


def test_missing_audio_file_is_named(utts, tmp_path):
    gone = dataclasses.replace(utts[0], id="gone", audio=str(tmp_path / "missing.wav"))
    with pytest.raises(BadInputError, match="gone .*missing.wav.*cannot read audio"):
        FeatureStore().speech("mfcc", [gone])


def test_extract_missing_false_returns_cached_only(utts, caplog):
    store = FeatureStore()
    store.speech("mfcc", utts[:1])
    with caplog.at_level("WARNING"):
        got = store.speech("mfcc", utts, extract_missing=False)
    assert list(got) == [utts[0].id] and "2 of 3" in caplog.text


def test_keys_follow_content_and_span(utts):
    store = FeatureStore()
    whole = store.speech("mfcc", utts[:1])[utts[0].id]
    part = dataclasses.replace(utts[0], start=0.0, end=1.0)
    cut = store.speech("mfcc", [part])[part.id]
    assert store.extracted == 1  # a new span is a new entry
    assert cut.shape[0] == 101 and whole.shape[0] > cut.shape[0]


def test_text_sources_share_entries(utts, tiny_bert_dir):
    name = f"hf-text:{tiny_bert_dir}"
    utts[0].transcripts["asr:whisper-base"] = utts[0].text  # ASR got it right
    utts[1].transcripts["asr:whisper-base"] = ""  # ASR heard nothing
    utts[2].transcripts["asr:whisper-base"] = utts[2].text[:5]
    store = FeatureStore()
    gold = store.text(name, utts)
    assert store.extracted == 3 and all(a.dtype == np.float16 for a in gold.values())
    asr = store.text(name, utts, source="asr:whisper-base")
    assert store.hits == 1 and store.extracted == 2  # the correct transcript is the gold entry
    assert asr[utts[1].id].shape == (1, 32) and not np.asarray(asr[utts[1].id]).any()
    with pytest.raises(BadInputError, match="no 'asr:vosk-ko' transcript"):
        store.text(name, utts, source="asr:vosk-ko")
    skips = SkipLog()
    assert store.text(name, utts, source="asr:vosk-ko", skips=skips) == {} and len(skips) == 3


def test_text_with_packaged_sentence_encoder(utts, require_model):
    require_model("e5-small")
    got = FeatureStore().text("e5-small", utts[:2])
    assert [a.shape for a in got.values()] == [(1, 384), (1, 384)]


def test_cli_extract_and_list(tmp_path):
    from typer.testing import CliRunner

    from koemo.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["features", "extract", "-e", "mfcc", "--limit", "2", "--store", str(tmp_path / "fs")])
    assert res.exit_code == 0, res.output
    assert "mfcc: 2 utterances kept, 0 skipped" in res.output
    res = runner.invoke(app, ["features", "list", "--store", str(tmp_path / "fs"), "--json"])
    assert '"entries": 2' in res.output
    res = runner.invoke(app, ["features", "extract", "-e", "e5-small", "-t", "asr:nothing", "--limit", "2"])
    assert res.exit_code != 0 and "koemo transcribe" in str(res.exception)


def test_an_entry_is_written_to_a_temporary_file_then_renamed(tmp_path, monkeypatch):
    """A write killed half-way leaves no entry at the final path (the next run recomputes it)."""
    import numpy as np
    import pytest

    from koemo.encoders.store import FeatureStore

    target = tmp_path / "ab" / "abcd.npy"
    real_save = np.save

    def dies_mid_write(f, arr, *a, **kw):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        FeatureStore._write(target, np.ones((3, 2)), "u1")
    assert not target.exists() and not list(target.parent.glob("*.npy"))
    monkeypatch.setattr(np, "save", real_save)
    FeatureStore._write(target, np.ones((3, 2)), "u1")
    assert np.load(target).shape == (3, 2)
