"""The transcript cache: keys, persistence, WAL, file hashes; transcription resumes from it."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import soundfile as sf

from koemo.asr.cache import TranscriptCache, default_cache_path, noise_key
from koemo.asr.noise import NoiseCondition
from koemo.asr.transcribe import transcribe_manifest, transcribe_utterances
from koemo.data.manifest import Utterance, read_manifest, write_manifest
from koemo.paths import REPO_ROOT, cache_root

from tests.conftest import tone


def test_put_get_and_keys_are_separate(tmp_path):
    with TranscriptCache(tmp_path / "t.sqlite") as cache:
        cache.put("audio1", "backendA", "", "안녕")
        assert cache.get("audio1", "backendA", "") == "안녕"
        assert cache.get("audio1", "backendB", "") is None
        assert cache.get("audio1", "backendA", "babble") is None
        assert cache.get("audio2", "backendA", "") is None
        cache.put("audio1", "backendA", "", "")  # an empty transcript is a result, not a miss
        assert cache.get("audio1", "backendA", "") == ""
        assert len(cache) == 1


def test_persists_across_connections_in_wal_mode(tmp_path):
    path = tmp_path / "t.sqlite"
    with TranscriptCache(path) as cache:
        cache.put("a", "b", "", "텍스트")
    with TranscriptCache(path) as cache:
        assert cache.get("a", "b", "") == "텍스트"
        assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_path_is_under_the_cache_root():
    assert default_cache_path() == cache_root() / "asr" / "transcripts.sqlite"


def test_audio_key_follows_content_and_span(tmp_path):
    a = tmp_path / "a.wav"
    sf.write(str(a), tone(1.0, seed=1), 16000)
    with TranscriptCache(tmp_path / "t.sqlite") as cache:
        whole = cache.audio_key(Utterance("u", str(a), "neutral"))
        part = cache.audio_key(Utterance("u", str(a), "neutral", start=0.2, end=0.5))
        assert part.startswith(whole) and part.endswith("[0.2:0.5]")
        # Same bytes elsewhere: same key. Changed bytes: new key, even at the same path.
        b = tmp_path / "b.wav"
        b.write_bytes(a.read_bytes())
        assert cache.audio_key(Utterance("v", str(b), "neutral")) == whole
        sf.write(str(a), tone(1.5, seed=2), 16000)
        os.utime(a, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert cache.audio_key(Utterance("u", str(a), "neutral")) != whole


def test_noise_key_includes_condition_and_babble_pool():
    assert noise_key(None) == ""
    white = noise_key(NoiseCondition("white", 10.0, 0))
    assert white != noise_key(NoiseCondition("white", 10.0, 1)) != noise_key(NoiseCondition("white", 5.0, 0))
    babble = NoiseCondition("babble", 10.0)
    assert noise_key(babble, ["a:1", "b:2"]) != noise_key(babble, ["a:1", "c:3"])


@pytest.fixture
def speech_manifest(tmp_path, emotiontts_utts):
    """Three real EmotionTTS clips and one corrupt file, as a manifest."""
    utts = [Utterance(u.id, u.audio, u.label, u.text) for u in emotiontts_utts[:3]]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    utts.insert(1, Utterance("broken", str(bad), "neutral", "깨진 파일"))
    path = tmp_path / "m.jsonl"
    write_manifest(path, utts)
    return path


@pytest.mark.slow
def test_cli_interrupted_run_resumes_from_the_cache(speech_manifest, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "koemo.cli", "transcribe", "--backend", "whisper-base",
           "--set", f"data.manifest={speech_manifest}"]
    # A shell's background job starts with SIGINT ignored, and Python keeps it ignored: give the
    # child the default disposition so the interrupt reaches it however pytest was launched.
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = cache_root() / "asr" / "transcripts.sqlite"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and run.poll() is None and done < 1:
        time.sleep(0.05)
        if db.exists():
            try:
                done = sqlite3.connect(db).execute("SELECT COUNT(*) FROM transcripts").fetchone()[0]
            except sqlite3.OperationalError:
                pass  # table not created yet
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, f"exit {run.returncode} (0: the run ended before the interrupt)\n{err}"
    assert "Traceback" not in err
    assert "interrupted; finished results are kept and a re-run resumes" in err
    assert all("asr:whisper-base" not in u.transcripts for u in read_manifest(speech_manifest))

    # the default recipe (emotiontts) decodes whisper-base from the encoder's pass over its
    # window: resume with the recogniser it builds
    from koemo.config import Recipe, load_config, resolve_recipe
    from koemo.encoders.one_pass import recogniser_factory

    factory = recogniser_factory(load_config(Recipe, resolve_recipe("emotiontts")), "whisper-base")
    report = transcribe_manifest(speech_manifest, "whisper-base", progress=False, factory=factory)
    assert report.cached >= 1 and report.cached + report.computed == 3
    # The corrupt clip is skipped, counted and named; the others are in the manifest.
    assert len(report.skips) == 1 and str(report.skips.skipped[0]).startswith("broken (")
    assert "not readable as audio" in str(report.skips.skipped[0])
    texts = {u.id: u.transcripts.get("asr:whisper-base") for u in read_manifest(speech_manifest)}
    assert texts["broken"] is None and all(texts[k] for k in texts if k != "broken")

    again = transcribe_manifest(speech_manifest, "whisper-base", progress=False, factory=factory)
    assert (again.cached, again.computed) == (3, 0)


@pytest.mark.slow
def test_two_workers_give_the_same_transcripts(tmp_path, emotiontts_utts):
    utts = [Utterance(u.id, u.audio, u.label, u.text) for u in emotiontts_utts[:2]]
    one = transcribe_utterances(utts, "whisper-base", "white", 10.0, cache=TranscriptCache(tmp_path / "1.sqlite"), progress=False)
    two = transcribe_utterances(utts, "whisper-base", "white", 10.0, jobs=2, cache=TranscriptCache(tmp_path / "2.sqlite"), progress=False)
    assert one.texts == two.texts and two.computed == 2
    # A subset draws the same babble/noise as the full run, so it finds the full run's entries.
    part = transcribe_utterances(utts, "whisper-base", "white", 10.0, cache=TranscriptCache(tmp_path / "1.sqlite"),
                                 progress=False, only={utts[1].id})
    assert part.texts == {utts[1].id: one.texts[utts[1].id]} and (part.cached, part.computed) == (1, 0)


def test_storing_a_column_keeps_the_others_and_drops_stale_entries(tmp_path):
    from koemo.asr.transcribe import store_transcripts

    path = tmp_path / "m.jsonl"
    write_manifest(path, [
        Utterance("a", "a.wav", "neutral", transcripts={"asr:vosk-ko": "v", "asr:whisper-base": "old"}),
        Utterance("b", "b.wav", "neutral", transcripts={"asr:whisper-base": "stale"}),
    ])
    store_transcripts(path, "asr:whisper-base", {"a": "new"})  # b was skipped this time
    a, b = read_manifest(path)
    assert a.transcripts == {"asr:vosk-ko": "v", "asr:whisper-base": "new"}
    assert b.transcripts == {}
    # A sample run touches only its scope: the others keep what an earlier run wrote.
    store_transcripts(path, "asr:whisper-base", {}, scope={"a"})
    a, _ = read_manifest(path)
    assert "asr:whisper-base" not in a.transcripts and a.transcripts["asr:vosk-ko"] == "v"
    write_manifest(path, [Utterance("a", "a.wav", "neutral", transcripts={"asr:whisper-base": "keep"}),
                          Utterance("b", "b.wav", "neutral")])
    store_transcripts(path, "asr:whisper-base", {"b": "new"}, scope={"b"})
    assert [u.transcripts.get("asr:whisper-base") for u in read_manifest(path)] == ["keep", "new"]


def test_evenly_spaced_sample_covers_the_whole_manifest():
    from koemo.asr.transcribe import evenly_spaced

    utts = [Utterance(f"u{i:03d}", "x.wav", "neutral") for i in range(300)]
    picked = evenly_spaced(utts, 60)
    assert len(picked) == 60 and {"u000", "u295"} <= picked
    # every block of 20 (one speaker in the sorted EmotionTTS manifest) gets 4 clips
    assert all(sum(f"u{i:03d}" in picked for i in range(s, s + 20)) == 4 for s in range(0, 300, 20))
    assert evenly_spaced(utts[:5], 10) == {u.id for u in utts[:5]}
    with pytest.raises(ValueError):
        evenly_spaced(utts, 0)
