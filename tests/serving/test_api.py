"""The HTTP API on the real pipeline: predictions, every kind of bad input, concurrency."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import struct

import httpx
import numpy as np
import pytest

from koemo.data.audio import load_audio
from tests.conftest import tone
from tests.serving.conftest import LABELS, wav_bytes

pytestmark = pytest.mark.slow


def check_prediction(body: dict, name: str) -> None:
    assert body["file"] == name
    assert body["label"] in LABELS
    assert set(body["probabilities"]) == set(LABELS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["segments"] and all(s["label"] in LABELS for s in body["segments"])
    c = body["contribution"]
    assert c is not None and c["audio"] + c["text"] == pytest.approx(1.0) and 0 <= c["audio"] <= 1
    for stage in ("asr", "speech_encoder", "text_encoder", "fusion", "decode", "total"):
        assert body["timings"][stage] >= 0


def test_predict_multipart_real_clip(client, clip):
    r = client.post("/v1/predict", files={"file": (clip.name, clip.read_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    body = r.json()
    check_prediction(body, clip.name)
    # whisper-base hears Korean: the transcript is Hangul, not empty
    assert any("\uac00" <= ch <= "\ud7a3" for ch in body["transcript"])
    # one utterance: the clip cut to its speech (EmotionTTS leaves ~0.4 s of silence before it)
    from koemo.serving.segment import trimmed_span

    span = trimmed_span(load_audio(clip))
    assert 0.05 < span.start < 0.6
    assert len(body["segments"]) == 1 and (body["segments"][0]["start"], body["segments"][0]["end"]) == (span.start, span.end)
    assert body["duration"] == pytest.approx(len(load_audio(clip)) / 16000, abs=0.01)


def test_predict_json_base64_and_raw_body_agree(client, clip):
    data = clip.read_bytes()
    a = client.post("/v1/predict", json={"audio_base64": base64.b64encode(data).decode(), "filename": "x.wav"})
    b = client.post("/v1/predict", content=data, headers={"content-type": "audio/wav"})
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    check_prediction(a.json(), "x.wav")
    check_prediction(b.json(), "<uploaded audio>")
    assert a.json()["probabilities"] == pytest.approx(b.json()["probabilities"], abs=1e-5)


def test_long_recording_is_segmented(predictor, serving_utts):
    """Two utterances with a pause between them, over the segmentation threshold: VAD cuts them
    and each gets its own label and timestamps."""
    from dataclasses import replace

    a = load_audio(serving_utts[0].audio)
    b = load_audio(serving_utts[2].audio)
    gap = np.zeros(int(1.5 * 16000), dtype=np.float32)
    audio = np.concatenate([gap, a, gap, b, gap])
    p = replace(predictor, limits=replace(predictor.limits, segment_over_s=5.0))
    result = p.predict(audio, name="two.wav")
    segs = result["segments"]
    assert len(segs) >= 2
    assert all(s["label"] in LABELS for s in segs)
    assert all(s1["end"] <= s2["start"] for s1, s2 in zip(segs, segs[1:]))
    assert segs[0]["start"] >= 1.0  # leading silence is not an utterance
    assert segs[-1]["end"] <= len(audio) / 16000 - 1.0
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["timings"]["vad"] > 0


def test_health_model_docs_and_page(client):
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["busy"] == 0
    m = client.get("/v1/model").json()
    assert m["labels"] == list(LABELS)
    assert m["asr"] == "whisper-base"
    assert m["encoders"]["speech"]["name"] == "whisper-base-encoder"
    assert m["encoders"]["text"]["name"] == "embeddinggemma-300m"
    assert m["fusion"] == "shallow" and m["koemo_version"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/health", "/v1/model"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text
    assert client.get("/static/app.js").status_code == 200


# ---- bad input ---------------------------------------------------------------------------------

def _wav_with_format_tag(tag: int) -> bytes:
    """A WAV whose fmt chunk names an audio coding nobody decodes (0x1234)."""
    samples = (tone(0.5) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", tag, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _multipart(name: str, data: bytes, ctype: str = "audio/wav") -> dict:
    return {"files": {"file": (name, data, ctype)}}


TEN_MINUTES = None


def ten_minute_wav() -> bytes:
    global TEN_MINUTES
    if TEN_MINUTES is None:
        t = np.arange(600 * 16000, dtype=np.float32) / 16000
        TEN_MINUTES = wav_bytes((0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    return TEN_MINUTES


BAD = {
    "empty file": (_multipart("empty.wav", b""), 422, "empty upload"),
    "empty raw body": ({"content": b"", "headers": {"content-type": "application/octet-stream"}}, 422, "empty upload"),
    "text renamed .wav": (_multipart("notes.wav", "회의록: 다음 주 월요일".encode() * 50), 415, "not a supported audio format"),
    "truncated wav": (_multipart("cut.wav", wav_bytes(tone(2.0))[:20000]), 422, "truncated WAV"),
    "truncated header": (_multipart("head.wav", wav_bytes(tone(2.0))[:30]), 415, "not a supported audio format"),
    "zero-length wav": (_multipart("zero.wav", wav_bytes(np.zeros(0, np.float32))), 422, "zero-length"),
    "silent wav": (_multipart("silence.wav", wav_bytes(np.zeros(16000, np.float32))), 422, "silence"),
    "unknown sample format": (_multipart("adpcm.wav", _wav_with_format_tag(0x1234)), 415, "not a supported audio format"),
    "unsupported content type": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content type"),
    "multipart without file": ({"data": {"audio": "x"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, 422, "no file field"),
    "json without audio": ({"json": {"audio": "AAAA"}}, 422, "audio_base64"),
    "json not json": ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "audio_base64"),
    "bad base64": ({"json": {"audio_base64": "***", "filename": "b.wav"}}, 422, "not valid base64"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_clear_4xx(client, case):
    kwargs, status, words = BAD[case]
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and words in body["error"]
    assert "\n" not in body["error"] and body["error"].startswith(body["file"] + ": ")


def test_ten_minute_audio_is_refused_by_duration(client):
    r = client.post("/v1/predict", **_multipart("long.wav", ten_minute_wav()))
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "long.wav: audio is 600.0 s long; the limit is 300 s"


def test_upload_size_limit(predictor):
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from koemo.serving.app import create_app

    small = create_app(predictor, replace(predictor.limits, max_upload_mb=1))
    with TestClient(small) as c:
        r = c.post("/v1/predict", **_multipart("big.wav", ten_minute_wav()))
        assert r.status_code == 413 and "limit is 1 MB" in r.json()["error"]
        data = base64.b64encode(ten_minute_wav()[: 1100 * 1024]).decode()
        r = c.post("/v1/predict", json={"audio_base64": data, "filename": "big.wav"})
        assert r.status_code == 413 and "limit is 1 MB" in r.json()["error"]


def test_concurrent_requests_over_http(live_server, clip):
    """Good and bad uploads at once through a real socket: each gets its own answer, the
    service stays up."""
    good = clip.read_bytes()
    jobs = [("a.wav", good, 200), ("junk.wav", b"\x00garbage" * 100, 415), ("b.wav", good, 200),
            ("cut.wav", wav_bytes(tone(2.0))[:20000], 422)]

    def send(job):
        name, data, _ = job
        return httpx.post(f"{live_server}/v1/predict", files={"file": (name, data, "audio/wav")}, timeout=120)

    with cf.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, jobs))
    for (name, _, status), r in zip(jobs, responses):
        assert r.status_code == status, (name, r.text)
        assert r.json()["file"] == name
    a, b = responses[0].json(), responses[2].json()
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    health = httpx.get(f"{live_server}/v1/health").json()
    assert health == {**health, "status": "ok", "busy": 0, "queued": 0}


def test_full_queue_answers_503_and_recovers(predictor, clip):
    """One worker, no waiting room: a second request while the first runs gets 503 with
    Retry-After; the first still succeeds and the service takes requests again afterwards."""
    import threading
    import time
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from koemo.serving.app import create_app

    app = create_app(predictor, replace(predictor.limits, workers=1, max_queue=0))
    with TestClient(app) as c:
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", c.post("/v1/predict", **_multipart("a.wav", clip.read_bytes()))))
        t.start()
        deadline = time.time() + 60
        while c.get("/v1/health").json()["busy"] == 0 and time.time() < deadline and t.is_alive():
            time.sleep(0.02)
        r = c.post("/v1/predict", **_multipart("b.wav", clip.read_bytes()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"].startswith("b.wav: ")
        t.join(120)
        assert first["r"].status_code == 200
        assert c.post("/v1/predict", **_multipart("bad.wav", b"junk")).status_code == 415


def test_long_noise_without_speech_is_refused(client):
    """20 s of hiss is over the segmentation threshold and VAD finds no utterance in it."""
    rng = np.random.default_rng(0)
    hiss = (0.01 * rng.standard_normal(20 * 16000)).astype(np.float32)
    r = client.post("/v1/predict", **_multipart("hiss.wav", wav_bytes(hiss)))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "hiss.wav: no speech found in 20.0 s of audio"
