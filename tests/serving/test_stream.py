"""Streaming (``/v1/stream``): the incremental VAD segmenter against the offline one, the WebSocket
protocol and its bad input (fast, on a stand-in predictor), the real pipeline on a recording of
several EmotionTTS clips joined with silences (slow), and the delay from an utterance's end to its
result, streamed in real time to a live server (slow)."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from koemo.data.audio import SAMPLE_RATE, load_audio
from koemo.serving.limits import Limits
from koemo.serving.segment import SegmentConfig, cut, speech_spans
from koemo.serving.vad_stream import StreamSegmenter
from tests.serving.conftest import LABELS

GAP = 1.5  # seconds of silence between the clips


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def joined(utts, gaps) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips joined with silences (``gaps[0]`` before the first); the clips' true (start, end)."""
    parts, bounds, t = [silence(gaps[0])], [], gaps[0]
    for u, gap in zip(utts, list(gaps[1:]) + [gaps[-1]]):
        a = load_audio(u.audio)
        parts += [a, silence(gap)]
        bounds.append((t, t + len(a) / SAMPLE_RATE))
        t += len(a) / SAMPLE_RATE + gap
    return np.concatenate(parts), bounds


def voiced(audio: np.ndarray, db: float = -35.0) -> tuple[float, float]:
    """Seconds where the voice starts and ends: the first and last 20 ms frame within ``db`` of the
    loudest (an energy measure, independent of the VAD)."""
    n = len(audio) // 320
    rms = np.sqrt((audio[: n * 320].reshape(n, 320) ** 2).mean(1) + 1e-12)
    on = np.nonzero(20 * np.log10(rms / rms.max()) > db)[0]
    return on[0] * 0.02, (on[-1] + 1) * 0.02


def run(audio: np.ndarray, sizes, config: SegmentConfig | None = None):
    seg, out, i, k = StreamSegmenter(config), [], 0, 0
    while i < len(audio):
        n = sizes[k % len(sizes)]
        out += seg.feed(audio[i : i + n])
        i, k = i + n, k + 1
    return out + seg.flush()


@pytest.fixture(scope="module")
def recording(serving_utts):
    """Four real clips, silences of 1.5, 0.6 (merged by the 0.8 s rule), 1.2 and 2 s."""
    return joined(serving_utts[:4], [0.7, 0.6, 1.2, 2.0])[0]


# ---- the segmenter (no emotion model) ---------------------------------------------------------
@pytest.mark.parametrize("sizes", [[1600], [1, 7, 513, 2049, 333], [10**9]], ids=["100ms", "odd", "whole"])
def test_segmenter_matches_offline_spans(recording, sizes):
    ref = speech_spans(recording)
    got = run(recording, sizes)
    assert len(ref) >= 2
    assert [(u.span.start, u.span.end) for u in got] == [(s.start, s.end) for s in ref]
    for u, span in zip(got, ref):
        np.testing.assert_array_equal(u.audio, cut(recording, span))


def test_segmenter_one_sample_chunks(serving_utts):
    audio = np.concatenate([silence(0.5), load_audio(serving_utts[0].audio)[: 2 * SAMPLE_RATE], silence(1.3)])
    assert [u.span for u in run(audio, [1])] == speech_spans(audio)


@pytest.mark.parametrize("config", [SegmentConfig(merge_gap_s=0), SegmentConfig(max_segment_s=4.0)], ids=["no-merge", "max-4s"])
def test_segmenter_other_rules(serving_utts, config):
    """Clips back to back (speech longer than max_segment_s is split) and without merging."""
    audio, _ = joined(serving_utts[2:6], [0.3, 0.05, 0.9, 0.3])
    ref = speech_spans(audio, config)
    assert [u.span for u in run(audio, [1600, 999], config)] == ref
    if config.max_segment_s == 4.0:
        assert max(s.duration for s in ref) <= 4.0 and len(ref) >= 4


def test_utterances_close_about_one_second_after_their_end(recording):
    """Each utterance comes out of feed() (not flush) once ~1 s of silence follows it: 0.1 s pad,
    the 0.8 s merge gap, the next one's 0.1 s pad, to the 32 ms window and the 100 ms chunk."""
    seg, closed = StreamSegmenter(), []
    for i in range(0, len(recording), 1600):
        closed += seg.feed(recording[i : i + 1600])
    assert len(closed) == len(speech_spans(recording))  # the last one too: 2 s of silence follow it
    for u in closed:
        assert 0.8 <= u.closed_at - u.span.end <= 1.15, u
    assert seg.flush() == []


def test_tentative_is_the_utterance_that_then_closes(recording):
    """During each pause, tentative() names the utterance that closes if the pause lasts: the last
    one named before an utterance closes is that utterance (span and samples); a pause the next
    speech bridges (0.6 s here, under the merge gap) names one that never closes; and asking
    changes nothing."""
    seg, closed, named = StreamSegmenter(), [], []
    for i in range(0, len(recording), 1600):
        for u in seg.feed(recording[i : i + 1600]):
            assert named and named[-1].span == u.span
            np.testing.assert_array_equal(named[-1].audio, u.audio)
            closed.append(u)
        t = seg.tentative()
        if t is not None and (not named or named[-1].span != t.span):
            named.append(t)
    closed += seg.flush()
    assert [u.span for u in closed] == [u.span for u in run(recording, [1600])] == speech_spans(recording)
    assert len(named) == len(closed) + 1  # one pause was bridged
    assert seg.tentative() is None  # flushed
    assert StreamSegmenter().tentative() is None


def test_segmenter_edge_cases(serving_utts):
    assert StreamSegmenter().flush() == []
    assert run(silence(3.0), [1600]) == []
    speech = load_audio(serving_utts[0].audio)
    cut_short = np.concatenate([silence(0.5), speech])  # the stream ends while someone speaks
    got = run(cut_short, [1600])
    assert [u.span for u in got] == speech_spans(cut_short) and got[-1].span.end == pytest.approx(len(cut_short) / SAMPLE_RATE, abs=1e-3)
    seg = StreamSegmenter()
    seg.flush()
    with pytest.raises(Exception, match="flushed"):
        seg.feed(speech)


# ---- the protocol, on a stand-in predictor ------------------------------------------------------
class FakePredictor:
    """Answers at once; records what it was given."""

    segment_config = SegmentConfig()

    def __init__(self):
        self.seen = []

    def predict(self, audio, *, name="", session=None, normalise=None):
        self.seen.append(len(audio) / SAMPLE_RATE)
        probs = dict(zip(LABELS, (0.7, 0.1, 0.1, 0.1)))
        return {"transcript": "안녕", "label": "neutral", "probabilities": probs, "contribution": {"audio": 0.5, "text": 0.5}}


def fake_client(limits: Limits | None = None, middleware: bool = False):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from koemo.serving.stream import register_stream

    app = FastAPI()
    predictor = FakePredictor()
    register_stream(app, predictor, limits or Limits())
    if middleware:  # a pure ASGI middleware in front, like the API-key one
        inner = app

        async def app(scope, receive, send):
            scope.setdefault("state", {})["seen_by_middleware"] = True
            await inner(scope, receive, send)
    return TestClient(app), predictor


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def converse(ws, frames, end=True) -> list[dict]:
    """Send the frames (and the end message); the server's messages up to its end or error."""
    from starlette.websockets import WebSocketDisconnect

    assert ws.receive_json()["type"] == "ready"
    for f in frames:
        ws.send_bytes(f)
    if end:
        ws.send_text(json.dumps({"type": "end"}))
    out = []
    try:
        while True:
            msg = ws.receive_json()
            out.append(msg)
            if msg["type"] in ("end", "error") and "index" not in msg:
                break
    except WebSocketDisconnect:
        pass
    return out


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("middleware", [False, True], ids=["bare", "behind-asgi-middleware"])
def test_protocol_on_stand_in(recording, middleware):
    client, predictor = fake_client(middleware=middleware)
    with client.websocket_connect("/v1/stream?format=pcm16&early=0", subprotocols=["koemo"]) as ws:
        msgs = converse(ws, chunks(pcm16(recording), 3200))
    ref = speech_spans(recording)
    utts = [m for m in msgs if m["type"] == "utterance"]
    assert [(m["start"], m["end"]) for m in utts] == [(s.start, s.end) for s in ref]
    assert [m["index"] for m in utts] == list(range(len(ref)))
    assert msgs[-1] == {"type": "end", "utterances": len(ref), "duration": round(len(recording) / SAMPLE_RATE, 3)}
    assert all(m["latency_s"] >= 0 and m["closed_at"] > m["end"] for m in utts)
    assert predictor.seen == pytest.approx([s.duration for s in ref], abs=2e-3)


def test_merge_gap_query_answers_sooner(recording):
    """merge_gap=0: utterances are not joined across pauses, so each closes ~0.5 s sooner."""
    client, _ = fake_client()
    with client.websocket_connect("/v1/stream?merge_gap=0&early=0") as ws:
        assert ws.receive_json()["segment"]["merge_gap_s"] == 0
        for f in chunks(pcm16(recording), 3200):
            ws.send_bytes(f)
        ws.send_text('{"type": "end"}')
        msgs = [ws.receive_json() for _ in range(len(speech_spans(recording, SegmentConfig(merge_gap_s=0))) + 1)]
    ref = speech_spans(recording, SegmentConfig(merge_gap_s=0))
    assert [(m["start"], m["end"]) for m in msgs[:-1]] == [(s.start, s.end) for s in ref] and msgs[-1]["type"] == "end"
    assert all(0.3 <= m["closed_at"] - m["end"] <= 0.6 for m in msgs[:-1])


def test_f32_at_48k_is_resampled(recording):
    import soxr

    client, _ = fake_client()
    audio48 = soxr.resample(recording, SAMPLE_RATE, 48000).astype("<f4")
    with client.websocket_connect("/v1/stream?format=f32&sample_rate=48000") as ws:
        msgs = converse(ws, chunks(audio48.tobytes(), 4 * 4800))
    got = [(m["start"], m["end"]) for m in msgs if m["type"] == "utterance"]
    ref = [(s.start, s.end) for s in speech_spans(recording)]
    assert len(got) == len(ref) and np.allclose(got, ref, atol=0.1)


def test_webm_opus_stream(serving_utts):
    """MediaRecorder's format: webm/opus bytes in pieces, decoded as the container grows."""
    import av

    audio, bounds = joined(serving_utts[:2], [0.5, GAP])
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm16(audio), "<i2")[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    client, _ = fake_client()
    with client.websocket_connect("/v1/stream?format=webm") as ws:
        msgs = converse(ws, chunks(buf.getvalue(), 2000))
    got = [(m["start"], m["end"]) for m in msgs if m["type"] == "utterance"]
    ref = [(s.start, s.end) for s in speech_spans(audio)]  # opus and 48 kHz change little
    assert len(got) == len(bounds) == len(ref) and np.allclose(got, ref, atol=0.1), (got, ref)


@pytest.mark.parametrize("query, frames, text, code, says", [
    ("format=mp3", [], None, 1003, "format='mp3'"),
    ("sample_rate=abc", [], None, 1003, "sample_rate"),
    ("session=a%20b", [], None, 1003, "session id"),
    ("merge_gap=5", [], None, 1003, "merge_gap"),
    ("merge_gap=soon", [], None, 1003, "merge_gap"),
    ("format=pcm16", [b"\x00" * 201], None, 1007, "201 bytes"),
    ("format=f32", [np.array([0.0, np.nan], "<f4").tobytes()], None, 1007, "NaN"),
    ("format=pcm16", [], "end please", 1007, "JSON"),
    ("format=pcm16", [], '{"type": "pause"}', 1003, "the only one"),
    ("format=webm", [b"not a webm file at all"], '{"type": "end"}', 1003, "webm"),
    ("format=pcm16", [b"\x00\x01" * 16000] * 4, None, 1009, "max_duration_s"),
])
def test_bad_input_gets_an_error_message(query, frames, text, code, says):
    """An error message saying what is wrong, then the close code; never a crash."""
    from starlette.websockets import WebSocketDisconnect

    client, _ = fake_client(Limits(max_duration_s=3))
    with client.websocket_connect(f"/v1/stream?{query}") as ws:
        msg = ws.receive_json()
        if frames or text:  # a good query: the server is ready, the frames are bad
            assert msg["type"] == "ready"
            for f in frames:
                ws.send_bytes(f)
            if text is not None:
                ws.send_text(text)
            msg = ws.receive_json()
        assert msg["type"] == "error" and says in msg["problem"] and msg["error"].startswith("stream: "), msg
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == code


def test_upload_limit_and_too_many_streams():
    from starlette.websockets import WebSocketDisconnect

    client, _ = fake_client(Limits(max_upload_mb=0.01, max_streams=1))
    with client.websocket_connect("/v1/stream") as first:
        assert first.receive_json()["type"] == "ready"
        with client.websocket_connect("/v1/stream") as second:
            err = second.receive_json()
            assert err["type"] == "error" and "limit is 1" in err["problem"]
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_json()
            assert closed.value.code == 1013
        first.send_bytes(b"\x00" * 20000)
        err = first.receive_json()
        assert err["type"] == "error" and "max_upload_mb" in err["problem"]
    with client.websocket_connect("/v1/stream") as again:  # the slot is free again
        assert again.receive_json()["type"] == "ready"


# ---- the real pipeline -------------------------------------------------------------------------
@pytest.mark.slow
def test_stream_real_recording(client, serving_utts):
    """Three real clips with 1.5 s silences, PCM16 in 100 ms chunks, through the real app."""
    picked = [serving_utts[i] for i in (0, 3, 5)]
    audio, bounds = joined(picked, [GAP] * 3)
    with client.websocket_connect("/v1/stream?format=pcm16&sample_rate=16000") as ws:
        msgs = converse(ws, chunks(pcm16(audio), 3200))
    utts = [m for m in msgs if m["type"] == "utterance"]
    assert len(utts) == 3, msgs
    for m, u, (start, end) in zip(utts, picked, bounds):
        # within the clip (0.1 s padding aside), and within 0.3 s of where its voice starts and ends
        # (EmotionTTS clips hold ~0.4 s of silence either side)
        assert start - 0.15 <= m["start"] < m["end"] <= end + 0.15, (m, start, end)
        on, off = voiced(load_audio(u.audio))
        assert abs(m["start"] - (start + on)) <= 0.3 and abs(m["end"] - (start + off)) <= 0.3, (m, start + on, start + off)
        assert m["label"] in LABELS and set(m["probabilities"]) == set(LABELS)
        assert sum(m["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert any("\uac00" <= ch <= "\ud7a3" for ch in m["transcript"]), m["transcript"]
        assert m["contribution"]["audio"] + m["contribution"]["text"] == pytest.approx(1.0)
    assert msgs[-1]["type"] == "end" and msgs[-1]["utterances"] == 3


@pytest.mark.slow
def test_delay_from_utterance_end_to_result(live_server, serving_utts):
    """Real time against uvicorn: 100 ms chunks sent at the pace of the audio. The delay of each
    result after the utterance's end in the audio is VAD's wait (~1 s of silence must follow)
    plus the classification; both are printed (``-s``) and bounded loosely for a shared machine."""
    import asyncio

    import websockets

    picked = [u for u in sorted(serving_utts, key=lambda u: u.duration) if 3.0 <= u.duration <= 5.5][:2]
    audio, _ = joined(picked, [0.5, GAP])
    url = live_server.replace("http://", "ws://") + "/v1/stream?format=pcm16"

    async def stream():
        results = []
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"

            async def receive():
                async for raw in ws:
                    msg = json.loads(raw)
                    results.append((time.perf_counter(), msg))
                    if msg["type"] == "end":
                        return

            reader = asyncio.create_task(receive())
            t0 = time.perf_counter()
            for k, i in enumerate(range(0, len(audio), 1600)):
                await asyncio.sleep(max(0.0, t0 + k * 0.1 - time.perf_counter()))
                await ws.send(pcm16(audio[i : i + 1600]))
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(reader, 60)
        return t0, results

    t0, results = asyncio.run(stream())
    utts = [(t, m) for t, m in results if m["type"] == "utterance"]
    assert len(utts) == 2
    for t, m in utts:
        delay = t - t0 - m["end"]  # the end's samples were sent at t0 + end (to the 100 ms chunk)
        vad = m["closed_at"] - m["end"]
        print(f"utterance {m['start']:.2f}-{m['end']:.2f} s: delay {delay:.2f} s = VAD {vad:.2f} s + "
              f"server {m['latency_s']:.2f} s (+ chunking/transport)")
        assert 0.8 <= vad <= 1.15
        assert delay < vad + 6.0  # loose: the machine is shared; the measured numbers are in docs


@pytest.mark.slow
def test_page_live_microphone(live_server, serving_utts, tmp_path):
    """The page's live mode in headless Chromium, its microphone fed from a real recording (two
    clips with silences): each utterance appears in the list with a label as it is closed."""
    from pathlib import Path

    import soundfile as sf
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("chromium / chromedriver missing; install with: apt-get install -y chromium chromium-driver")
    audio, _ = joined(serving_utts[:2], [1.0, GAP, 3.0])
    wav = tmp_path / "mic.wav"
    sf.write(str(wav), audio, SAMPLE_RATE, subtype="PCM_16")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}", "--use-fake-device-for-media-stream",
                 "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
                 "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(live_server + "/")
        driver.find_element(By.ID, "live").click()
        wait = WebDriverWait(driver, 90)
        # partials (dimmed) come first; each is replaced by its utterance's result
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#live-list li:not(.partial)")) >= 2)
        items = driver.find_elements(By.CSS_SELECTOR, "#live-list li:not(.partial)")
        assert len({li.get_attribute("data-index") for li in items}) == len(items)
        assert all(li.get_attribute("data-label") in LABELS for li in items)
        assert any("\uac00" <= ch <= "\ud7a3" for ch in items[0].text), items[0].text
        driver.find_element(By.ID, "live").click()  # stop: the page sends end, the server answers end
        wait.until(lambda d: "utterance(s)" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()


class SessionPredictor(FakePredictor):
    """Adds each utterance's 'voice statistics' (one frame per 10 ms) to the session it is given."""

    def predict(self, audio, *, name="", session=None, normalise=None):
        from koemo.fusion.inputs import Moments

        if session is not None:
            session.add(Moments.of(np.ones((len(audio) // 160, 2), np.float32)))
        return super().predict(audio, name=name, session=session, normalise=normalise)


@pytest.mark.parametrize("early", ["1", "0"])
def test_early_results_come_as_partials_and_never_reach_the_session_twice(recording, early):
    """early=1 (the default): a result computed during each pause goes out at once as a
    ``partial`` and, when the pause lasts, is the utterance's result; the one for a bridged pause
    is dropped, and the speaker session holds each utterance exactly once either way."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from koemo.serving.sessions import Sessions
    from koemo.serving.stream import register_stream

    app, predictor, sessions = FastAPI(), SessionPredictor(), Sessions()
    register_stream(app, predictor, Limits(), sessions=sessions)
    with TestClient(app).websocket_connect(f"/v1/stream?session=spk-1&early={early}") as ws:
        msgs = converse(ws, chunks(pcm16(recording), 3200))
    ref = speech_spans(recording)
    utts = [m for m in msgs if m["type"] == "utterance"]
    partials = [m for m in msgs if m["type"] == "partial"]
    assert [(m["start"], m["end"]) for m in utts] == [(s.start, s.end) for s in ref]
    assert sessions.get("spk-1").moments.n == sum(int(s.duration * SAMPLE_RATE) // 160 for s in ref)
    if early == "0":
        assert not partials and predictor.seen == pytest.approx([s.duration for s in ref], abs=2e-3)
        return
    assert len(predictor.seen) == len(ref) + 1  # one early result dropped: the 0.6 s pause
    closing = {(m["start"], m["end"]): m for m in utts}
    kept = [p for p in partials if (p["start"], p["end"]) in closing]
    assert len(kept) >= len(ref) - 1  # the last utterance may close before its partial is sent
    for p in kept:
        u = closing[(p["start"], p["end"])]
        assert p["index"] == u["index"] and p["label"] == u["label"] and p["probabilities"] == u["probabilities"]
        assert msgs.index(p) < msgs.index(u)


def test_early_query_is_checked():
    client, _ = fake_client()
    with client.websocket_connect("/v1/stream?early=yes") as ws:
        msg = ws.receive_json()
    assert msg["type"] == "error" and "early='yes'" in msg["problem"]
