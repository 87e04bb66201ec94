"""Speaker normalisation in service, without the models: the speech stage a bundle records is
applied per session, per recording or with the corpus statistics; sessions are kept per id."""

from __future__ import annotations

import numpy as np
import pytest

from koemo.errors import KoemoError
from koemo.fusion.inputs import Moments, Normaliser
from koemo.serving.limits import Limits
from koemo.serving.predictor import ClipStats, Predictor, SpeechStage
from koemo.serving.segment import Span
from koemo.serving.sessions import Session, Sessions
from tests.serving.conftest import wav_bytes

LABELS = ("neutral", "happy", "sad", "angry")


class Recorder:
    """A classifier that remembers the speech input it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, speech, text):
        self.seen.append(np.asarray(speech))
        return np.array([0.4, 0.3, 0.2, 0.1]), None


class Echo:
    def transcribe(self, audio):
        return "문장"


def make_predictor(min_clips: int = 2, temperature_probe=None) -> tuple[Predictor, Recorder]:
    """Frames are the audio itself, 10 samples to a frame of 10 dims: a recording's level is
    its frames' mean, so what normalisation did is visible in the statistics view."""
    corpus = Normaliser("speaker", np.full(10, 0.5, np.float32), np.ones(10, np.float32), min_clips)
    rec = Recorder()
    p = Predictor(labels=LABELS, asr=Echo(), speech_encoder=lambda a: a[: len(a) // 10 * 10].reshape(-1, 10),
                  text_encoder=lambda t: np.zeros((1, 4), np.float32), classify=rec,
                  limits=Limits(segment_over_s=0), speech_stage=SpeechStage("stats", corpus), overlap=False)
    return p, rec


def level(x: float, n: int = 16000) -> np.ndarray:
    return np.full(n, x, np.float32) + np.random.default_rng(int(x * 100)).normal(0, 0.01, n).astype(np.float32)


def test_none_uses_the_corpus_and_file_falls_back_to_it_for_one_utterance():
    p, rec = make_predictor()
    p.predict(level(0.2), normalise="none")
    p.predict(level(0.2), normalise="file")  # one utterance < min_clips: corpus statistics too
    for seen in rec.seen:
        np.testing.assert_allclose(seen[0, :10], 0.2 - 0.5, atol=0.01)  # (0.2 - corpus mean) / corpus sd


def test_a_session_normalises_by_the_speakers_own_recordings():
    p, rec = make_predictor(min_clips=2)
    session = Session()
    p.predict(level(0.2), session=session)  # first clip: under min_clips, corpus statistics
    np.testing.assert_allclose(rec.seen[-1][0, :10], -0.3, atol=0.01)
    p.predict(level(0.6), session=session)  # now 2 clips: mean 0.4, sd 0.2
    np.testing.assert_allclose(rec.seen[-1][0, :10], (0.6 - 0.4) / 0.2, rtol=0.05)
    assert session.moments.clips == 2
    p.predict(level(0.6), session=session, update_session=False)  # a second pass does not count twice
    assert session.moments.clips == 2
    other = Session()
    p.observe(level(0.2), other)
    p.observe(level(0.6), other)
    p.predict(level(0.2), session=other, update_session=False)
    np.testing.assert_allclose(rec.seen[-1][0, :10], (0.2 - 0.4) / 0.2, rtol=0.05)
    with pytest.raises(KoemoError, match="normalise='voice'"):
        p.predict(level(0.2), normalise="voice")


def test_a_batch_encodes_each_file_once_and_normalises_it_by_every_file(tmp_path):
    """``koemo predict DIR`` needs every file's statistics before the first result. A head that
    reads clip statistics keeps each file's encoding from that pass: one encoder pass per file,
    and the same answers as encoding every file again once the statistics are summed."""
    import soundfile as sf

    from koemo.serving.recognizer import Recognizer

    paths = []
    for i, x in enumerate((0.2, 0.6, 0.5, 0.3)):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], level(x), 16000)
    p, rec = make_predictor(min_clips=2)
    calls = []
    encoder = p.speech_encoder
    p.speech_encoder = lambda a: calls.append(len(a)) or encoder(a)
    results = Recognizer(p).predict_batch(paths)
    assert len(calls) == len(paths)  # one pass per file
    once = rec.seen[-len(paths):]
    # the same files, encoded again after the statistics pass (what a frames head does)
    again = Session()
    for path in paths:
        p.observe(read(path), again)
    twice = [p.predict(read(path), session=again, update_session=False) for path in paths]
    for a, b, r in zip(once, rec.seen[-len(paths):], results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(once[0][0, :10], (0.2 - 0.4) / np.sqrt(0.025), rtol=0.05)  # mean 0.4 of four
    assert [r.label for r in results] == [t["label"] for t in twice]
    kept = p.encode(level(0.2, 16000 * 30)).utterances[0][1]  # what a batch holds per file: 2 x 10 numbers
    assert isinstance(kept, ClipStats) and kept.stats.shape == (1, 20)
    p.speech_stage = SpeechStage("frames", p.speech_stage.normaliser)  # frames are not kept: two passes
    calls.clear()
    Recognizer(p).predict_batch(paths)
    assert len(calls) == 2 * len(paths)


def read(path) -> np.ndarray:
    import soundfile as sf

    return sf.read(path, dtype="float32")[0]


def test_sessions_are_bounded_and_ids_checked():
    sessions = Sessions(max_sessions=2)
    a = sessions.get("call-1")
    assert sessions.get("call-1") is a
    sessions.get("call-2")
    sessions.get("call-3")
    assert len(sessions) == 2 and sessions.get("call-1") is not a  # the least recently used went
    from koemo.errors import BadInputError

    with pytest.raises(BadInputError, match="session id"):
        sessions.get("../etc")
    m = Moments.of(np.ones((4, 3)))
    assert a.add(m).clips == 1 and a.add(m).clips == 2


def test_the_service_keeps_a_session_per_id():
    from fastapi.testclient import TestClient

    from koemo.serving.app import create_app

    p, rec = make_predictor(min_clips=2)
    with TestClient(create_app(p, Limits(segment_over_s=0))) as client:
        for x in (0.2, 0.6):
            r = client.post("/v1/predict?session=spk-7", content=wav_bytes(level(x)), headers={"content-type": "audio/wav"})
            assert r.status_code == 200, r.text
        np.testing.assert_allclose(rec.seen[-1][0, :10], 1.0, rtol=0.1)  # (0.6 - 0.4) / 0.2
        r = client.post("/v1/predict?session=spk-7&normalise=none", content=wav_bytes(level(0.6)),
                        headers={"content-type": "audio/wav"})
        np.testing.assert_allclose(rec.seen[-1][0, :10], 0.1, atol=0.02)
        bad = client.post("/v1/predict?session=a/b", content=wav_bytes(level(0.2)), headers={"content-type": "audio/wav"})
        assert bad.status_code == 422 and "session id" in bad.json()["problem"]
        odd = client.post("/v1/predict?normalise=voice", content=wav_bytes(level(0.2)), headers={"content-type": "audio/wav"})
        assert odd.status_code == 422


def test_a_deployment_session_gathers_the_requests_that_name_none():
    """``koemo serve --deployment-session``: a request without ``session`` is normalised by all
    such requests so far; one with a session keeps its own, and does not join."""
    from fastapi.testclient import TestClient

    from koemo.serving.app import create_app

    wav = {"content": wav_bytes(level(0.2)), "headers": {"content-type": "audio/wav"}}
    louder = {"content": wav_bytes(level(0.6)), "headers": {"content-type": "audio/wav"}}
    p, rec = make_predictor(min_clips=2)
    with TestClient(create_app(p, Limits(segment_over_s=0), deployment_session=True)) as client:
        assert client.post("/v1/predict", **wav).status_code == 200
        np.testing.assert_allclose(rec.seen[-1][0, :10], -0.3, atol=0.02)  # one so far: the corpus's
        assert client.post("/v1/predict", **louder).status_code == 200
        np.testing.assert_allclose(rec.seen[-1][0, :10], 1.0, rtol=0.1)  # (0.6 - 0.4) / 0.2
        assert client.post("/v1/predict?session=caller-1", **louder).status_code == 200
        np.testing.assert_allclose(rec.seen[-1][0, :10], 0.1, atol=0.02)  # its own session: one clip
        assert client.get("/v1/model").json()["deployment_session"] == {"on": True, "utterances": 2}
    p, rec = make_predictor(min_clips=2)
    with TestClient(create_app(p, Limits(segment_over_s=0))) as client:  # off: each request alone
        for req in (wav, louder):
            assert client.post("/v1/predict", **req).status_code == 200
        np.testing.assert_allclose(rec.seen[-1][0, :10], 0.1, atol=0.02)
        assert client.get("/v1/model").json()["deployment_session"] == {"on": False, "utterances": 0}


def test_a_short_recording_is_cut_to_its_speech_before_the_encoders():
    """Silence at the edges is frames too: a clip with 2 s of silence either side must give the
    encoders what the clip alone gives (plus the margin), at any level."""
    from koemo.serving.segment import SegmentConfig, trimmed_span

    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(2 * np.pi * 180 * np.arange(16000) / 16000)).astype(np.float32)
    floor = lambda n: rng.normal(0, 1e-4, n).astype(np.float32)  # noqa: E731
    padded = np.concatenate([floor(32000), speech, floor(32000)])
    span = trimmed_span(padded)
    assert (span.start, span.end) == (1.75, 3.25)  # 2 s of silence, 1 s of speech, 0.25 s margins
    assert trimmed_span(padded * 0.01) == span  # level-relative
    tight = trimmed_span(padded, SegmentConfig(trim_margin_s=0.0))
    assert (tight.start, tight.end) == (2.0, 3.0)
    whole = trimmed_span(padded, SegmentConfig(trim_margin_s=None))
    assert (whole.start, whole.end) == (0.0, 5.0)
    noise = rng.normal(0, 0.1, 16000).astype(np.float32)  # no quiet edge: kept whole
    assert trimmed_span(noise) == Span(0.0, 1.0)
    assert trimmed_span(np.zeros(100, np.float32)) == Span(0.0, 0.006)  # under two frames: whole
    p, rec = make_predictor()
    seen = []
    p.speech_encoder = lambda a: seen.append(len(a)) or a[: len(a) // 10 * 10].reshape(-1, 10)
    out = p.predict(padded, normalise="none")
    assert seen == [int(1.5 * 16000)] and out["segments"][0]["start"] == 1.75
    assert out["duration"] == 5.0


def test_a_clip_standardised_by_the_corpus_gets_the_lone_clip_temperature():
    """softmax(z / T) raised to T / T_lone is softmax(z / T_lone): applied where the corpus
    statistics stood in for the speaker's, never to a session that has its own."""
    p, _ = make_predictor(min_clips=2)
    p.lone_power = 0.5  # T_lone = 2 T: flatter
    raw = np.array([0.4, 0.3, 0.2, 0.1])
    want = np.sqrt(raw) / np.sqrt(raw).sum()
    lone = p.predict(level(0.2), normalise="none")["probabilities"]
    np.testing.assert_allclose([lone[k] for k in LABELS], want, rtol=1e-9)
    alone_in_file = p.predict(level(0.2), normalise="file")["probabilities"]  # one utterance: corpus
    np.testing.assert_allclose([alone_in_file[k] for k in LABELS], want, rtol=1e-9)
    session = Session()
    p.predict(level(0.2), session=session)
    own = p.predict(level(0.3), session=session)["probabilities"]  # two clips: the speaker's own
    np.testing.assert_allclose([own[k] for k in LABELS], raw, rtol=1e-9)


def test_an_utterance_with_too_little_speech_is_flagged_not_refused():
    """Whisper makes up a sentence for a 0.3 s clip and the head answers anyway: the answer says so."""
    p, _ = make_predictor()
    rng = np.random.default_rng(1)

    def tone(speech_s: float) -> np.ndarray:
        floor = rng.normal(0, 1e-4, 8000).astype(np.float32)
        speech = (0.3 * np.sin(2 * np.pi * 180 * np.arange(int(speech_s * 16000)) / 16000)).astype(np.float32)
        return np.concatenate([floor, speech, floor])

    short = p.predict(tone(0.3), normalise="none")
    assert len(short["warnings"]) == 1 and "0.30 s of speech, too short to judge (under 0.5 s)" in short["warnings"][0]
    assert short["label"] in LABELS  # still answered
    assert p.predict(tone(0.6), normalise="none")["warnings"] == []


def test_a_second_head_answers_for_the_clips_the_corpus_normalises():
    p, first = make_predictor(min_clips=2)
    p.lone_power = 0.5  # ignored where a lone head brings its own temperature
    answers = []

    def second(speech, text):
        answers.append(np.asarray(speech))
        return np.array([0.1, 0.1, 0.1, 0.7]), None

    p.classify_lone = second
    out = p.predict(level(0.2), normalise="none")
    assert out["label"] == "angry" and out["probabilities"]["angry"] == pytest.approx(0.7) and len(answers) == 1
    session = Session()
    p.predict(level(0.2), session=session)  # one clip: still the corpus's statistics, the second head
    own = p.predict(level(0.3), session=session)  # two: the speaker's own, the first head
    assert len(answers) == 2 and own["label"] == "neutral" and own["probabilities"]["neutral"] == pytest.approx(0.4)
    assert len(first.seen) == 1


def test_the_lone_clip_head_reads_its_own_layers():
    """A second head trained on fewer layers (``encoders.speech_layers`` in ``train.lone_head``)
    gets them where the corpus statistics stand in; the first head keeps every layer."""
    from koemo.serving.loader import speech_stage_of

    norm = Normaliser("speaker", np.zeros((3, 4), np.float32), np.ones((3, 4), np.float32), 2)
    first, second = Recorder(), Recorder()
    p = Predictor(labels=LABELS, asr=Echo(), speech_encoder=lambda a: a[: len(a) // 12 * 12].reshape(-1, 3, 4),
                  text_encoder=lambda t: np.zeros((1, 4), np.float32), classify=first, classify_lone=second,
                  limits=Limits(segment_over_s=0), speech_stage=SpeechStage("stats", norm), overlap=False,
                  speech_stage_lone=SpeechStage("stats", norm, layers=(2, 1)))
    p.predict(level(0.2), normalise="none")
    assert second.seen[-1].shape == (1, 2, 8) and not first.seen
    session = Session()
    p.predict(level(0.2), session=session)
    p.predict(level(0.6), session=session)  # two clips: the session's statistics, the first head
    assert first.seen[-1].shape == (1, 3, 8)
    # a bundle records the layers its head reads; the service builds the same stage from it
    meta = {"encoders": {"speech": {"input": {"view": "stats", "pool": 1, "layers": [2, 3],
                                              "normalise": {"mode": "speaker", "min_clips": 3}}}}}
    bundle = type("Bundle", (), {"meta": meta, "path": "b", "input_arrays": lambda self: {
        "corpus_mean": np.zeros((4, 4), np.float32), "corpus_sd": np.ones((4, 4), np.float32)}})()
    stage = speech_stage_of(bundle)
    assert stage.layers == (2, 3) and stage.normaliser.min_clips == 3
    assert stage(np.ones((5, 4, 4), np.float32), None).shape == (1, 2, 8)
