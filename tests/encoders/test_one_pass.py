"""One Whisper pass per clip for transcript and features (koemo.encoders.one_pass): what it writes, what
it leaves alone, with a scripted recogniser; then the real whisper-base on two clips (slow)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
import soundfile as sf

from koemo.asr.base import ASRBackend, make_backend
from koemo.asr.cache import TranscriptCache
from koemo.config import ASRConfig, EncoderConfig
from koemo.data.manifest import Utterance
from koemo.encoders.one_pass import SharedPassBackend, fill, recogniser_factory
from koemo.encoders.store import FeatureStore


class FakeEncoder:
    id = "fake-encoder|layer=all"
    dim, frame_rate, finetunable = 4, 50.0, False


class FakeShared(ASRBackend):
    """Text = the clip's length in samples; frames = one row per 1,000 samples, filled with the
    clip number, so a test sees which clip's frames were written where."""

    name = "whisper-base"

    def __init__(self):
        self.encoder = FakeEncoder()
        self.frames = None
        self.calls = []

    def params(self):
        return {"fake": 1}

    def _recognise(self, audio):
        self.calls.append(audio.size)
        self.frames = np.full((audio.size // 1000, 4), len(self.calls), np.float32)
        return f"  {audio.size}  samples "


@pytest.fixture
def setup(tmp_path, write_wav):
    utts = [Utterance(f"u{i}", str(write_wav(f"u{i}.wav", seconds=s)), "happy") for i, s in enumerate((1.0, 0.5))]
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(8000, np.float32), 16000)
    utts.append(Utterance("silent", str(silent), "sad"))
    cache = TranscriptCache(tmp_path / "t.sqlite")
    yield utts, FeatureStore(tmp_path / "features"), cache, FakeShared()
    cache.close()


def _entry(store, backend, utt):
    return store.speech_path(store.encoder_dir("speech", backend.encoder), utt)


def test_one_pass_writes_the_transcript_and_the_frames_of_each_clip(setup):
    utts, store, cache, backend = setup
    report = fill(utts, store, cache=cache, backend=backend, progress=False)
    assert backend.calls == [16000, 8000]  # the silent clip is not decoded
    assert (report.transcripts, report.features, report.skipped) == (3, 2, [])
    texts = [cache.get(cache.audio_key(u), backend.cache_key, "") for u in utts]
    assert texts == ["16000 samples", "8000 samples", ""]  # as transcribe normalises them
    first, second = (np.load(_entry(store, backend, u)) for u in utts[:2])
    assert first.dtype == np.float16 and first.shape == (16, 4) and np.all(first == 1)
    assert second.shape == (8, 4) and np.all(second == 2)
    # no pass, so no frames: the silent clip must not get the clip before's
    assert not _entry(store, backend, utts[2]).exists()


def test_a_second_fill_finds_everything_and_passes_nothing(setup):
    utts, store, cache, backend = setup
    fill(utts, store, cache=cache, backend=backend, progress=False)
    again = fill(utts, store, cache=cache, backend=backend, progress=False)
    assert backend.calls == [16000, 8000] and (again.transcripts, again.features) == (0, 0)


def test_clips_already_transcribed_are_left_to_the_store_and_stored_frames_are_kept(setup):
    utts, store, cache, backend = setup
    cache.put(cache.audio_key(utts[0]), backend.cache_key, "", "known")
    kept = np.full((3, 4), 9, np.float32)
    store.put(_entry(store, backend, utts[1]), kept, "u1")
    report = fill(utts, store, cache=cache, backend=backend, progress=False)
    assert backend.calls == [8000] and (report.transcripts, report.features) == (2, 0)
    assert cache.get(cache.audio_key(utts[0]), backend.cache_key, "") == "known"
    np.testing.assert_array_equal(np.load(_entry(store, backend, utts[1])), kept)
    assert not _entry(store, backend, utts[0]).exists()


def test_a_clip_that_cannot_be_read_is_skipped_by_name(setup, tmp_path):
    utts, store, cache, backend = setup
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not audio")
    gone = Utterance("gone", str(tmp_path / "missing.wav"), "sad")
    report = fill([Utterance("bad", str(bad), "sad"), gone, utts[0]], store, cache=cache, backend=backend,
                  progress=False)
    assert report.transcripts == 1 and sorted(str(e).split(" ")[0] for e in report.skipped) == ["bad", "gone"]


def test_the_recipe_switch_applies_to_whisper_base_only():
    def recipe(window="30s", **asr):
        return NS(asr=ASRConfig(**asr), encoders=EncoderConfig(speech_window=window))

    assert recogniser_factory(recipe(shared_pass=True), "whisper-base") is SharedPassBackend
    assert recogniser_factory(recipe(shared_pass=True), "vosk-ko") is None
    assert recogniser_factory(recipe(), "whisper-base") is None
    clip = recogniser_factory(recipe("clip", shared_pass=True), "whisper-base")
    assert clip.func is SharedPassBackend and clip.keywords == {"window": "clip"}


@pytest.mark.slow
def test_real_one_pass_fills_what_transcribe_and_the_store_then_read(require_model, emotiontts_utts):
    from koemo.asr.transcribe import transcribe_utterances
    from koemo.data.audio import load_audio
    from koemo.encoders import get_speech_encoder

    require_model("whisper-base")
    utts = [u for u in emotiontts_utts if u.id in ("nea00004", "emb00101")]
    store = FeatureStore()
    report = fill(utts, store, progress=False)
    assert (report.transcripts, report.features) == (2, 2)
    got = transcribe_utterances(utts, "whisper-base", factory=SharedPassBackend, progress=False)
    assert (got.cached, got.computed) == (2, 0)
    feats = store.speech("whisper-base-encoder", utts, layer="all", progress=False)
    assert (store.hits, store.extracted) == (2, 0)
    enc = get_speech_encoder("whisper-base-encoder", layer="all")
    audio = load_audio(utts[0].audio)
    np.testing.assert_array_equal(feats[utts[0].id], enc.encode(audio).astype(np.float16))
    backend = SharedPassBackend()
    assert got.texts[utts[0].id] == backend.transcribe(audio)
    # faster-whisper's transcripts live under another key: neither run reads the other's
    assert make_backend("whisper-base").cache_key != backend.cache_key


# --- wiring: koemo reproduce and koemo transcribe call the pass when it pays -----------------------


def _plan(shared=True, layer="all", speech="whisper-base-encoder", sources=("asr:whisper-base",), models=None,
          window="30s"):
    recipe = NS(asr=NS(shared_pass=shared), encoders=NS(speech=speech, speech_layer=layer, speech_window=window),
                cache_dir=None)
    return NS(recipe=recipe, all_asr_sources=list(sources),
              speech_encoders=lambda: [speech] if models is None else models)


@pytest.mark.parametrize("plan, runs", [
    (_plan(), True),
    (_plan(window="clip"), True),
    (_plan(sources=("asr:vosk-ko", "asr:whisper-base@babble-5db", "asr:whisper-base")), True),
    (_plan(shared=False), False),
    (_plan(layer=None), False),  # the last layer alone: another store entry than the pass gives
    (_plan(speech="mfcc"), False),
    (_plan(models=[]), False),  # text-only rows: no speech features to fill
    (_plan(sources=("asr:whisper-base@babble-5db",)), False),  # noisy audio: its frames are not stored
    (_plan(sources=("asr:vosk-ko",)), False),
])
def test_reproduce_runs_the_pass_only_where_it_fills_both(monkeypatch, plan, runs):
    import koemo.encoders.one_pass as one_pass
    from koemo.experiments.inputs import _one_pass

    calls = []
    monkeypatch.setattr(one_pass, "fill", lambda utts, store, factory, progress=True: calls.append((utts, store, factory)))
    _one_pass(plan, ["u"], progress=False)
    assert len(calls) == int(runs) and all(c[0] == ["u"] and isinstance(c[1], FeatureStore) for c in calls)
    if runs:  # the pass sees the window the recipe's features come from
        factory = calls[0][2]
        assert getattr(factory, "keywords", {}).get("window", "30s") == plan.recipe.encoders.speech_window


def test_reproduce_leaves_the_pass_to_ray_actors(monkeypatch):
    import koemo.encoders.one_pass as one_pass
    from koemo import distributed
    from koemo.experiments.inputs import _one_pass

    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(one_pass, "fill", lambda *a, **k: pytest.fail("the pass ran beside Ray"))
    _one_pass(_plan(), ["u"], progress=False)


@pytest.mark.parametrize("args, fills, factory", [
    ([], True, SharedPassBackend),
    (["--noise", "babble", "--snr", "5"], False, SharedPassBackend),
    (["--sample", "2"], False, SharedPassBackend),
    (["--backend", "vosk-ko"], False, None),
    (["--set", "asr.shared_pass=false"], False, None),
    (["--set", "encoders.speech_layer=3"], False, SharedPassBackend),  # decoded so, but not the recipe's features
])
def test_transcribe_cli_runs_the_pass_and_decodes_as_the_recipe_says(monkeypatch, tmp_path, args, fills, factory):
    from typer.testing import CliRunner

    import koemo.encoders.one_pass as one_pass
    import koemo.asr.transcribe as transcribe
    from koemo.asr.transcribe import TranscribeReport
    from koemo.cli import app
    from koemo.data.manifest import write_manifest

    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance("a", "a.wav", "sad", "마")])
    filled, seen = [], []
    monkeypatch.setattr(one_pass, "fill", lambda utts, store, **k: filled.append([u.id for u in utts]))
    monkeypatch.setattr(transcribe, "transcribe_manifest",
                        lambda *a, factory=None, **k: seen.append(factory) or TranscribeReport("x"))
    result = CliRunner().invoke(app, ["transcribe", "-r", "emotiontts", "--set", f"data.manifest={manifest}", *args])
    assert result.exit_code == 0, result.output
    assert filled == ([["a"]] if fills else []) and len(seen) == 1
    # the recipe's window (emotiontts: 30s-merged) reaches the pass
    assert getattr(seen[0], "func", seen[0]) is factory
    assert getattr(seen[0], "keywords", None) == ({"window": "30s-merged"} if factory else None)


def test_worker_processes_build_the_recogniser_the_factory_gives(setup):
    """``--jobs 2``: each spawned worker builds its own recogniser from the (picklable) factory,
    not by name (by name this would be faster-whisper's, under another cache key)."""
    from koemo.asr.transcribe import transcribe_utterances

    utts, _, cache, _ = setup
    report = transcribe_utterances(utts, "whisper-base", jobs=2, cache=cache, factory=FakeShared, progress=False)
    assert report.texts == {"u0": "16000 samples", "u1": "8000 samples", "silent": ""}
    assert report.source == "asr:whisper-base" and report.computed == 3
    assert cache.get(cache.audio_key(utts[0]), FakeShared().cache_key, "") == "16000 samples"


def test_the_audio_hashes_are_kept_once_the_pass_ends(setup, tmp_path):
    """The store's memo of audio hashes is written once at the end (not per clip: at corpus size
    it holds every file), so a later run does not hash the corpus again."""
    import json
    from pathlib import Path

    utts, store, cache, backend = setup
    fill(utts, store, cache=cache, backend=backend, progress=False)
    memo = json.loads((tmp_path / "features" / "audio-sha256.json").read_text(encoding="utf-8"))
    assert sorted(k.split("|")[0] for k in memo) == sorted(str(Path(u.audio).resolve()) for u in utts)


def test_the_pass_of_a_clip_window_recipe_encodes_and_decodes_the_clip_window(require_model):
    require_model("whisper-base")
    backend = SharedPassBackend(window="clip")
    assert backend.encoder.window == "clip" and backend.encoder.stacked == 7
    assert backend.shared.decoder.options.after_end_s == 0.5  # segments past the audio dropped
    assert backend.cache_key != SharedPassBackend().cache_key  # its transcripts never mix with the 30 s pass's
