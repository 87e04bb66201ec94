"""Streaming recognition: ``/v1/stream``, a WebSocket that takes audio in chunks and answers one
result per utterance as soon as voice activity closes it (:mod:`koemo.serving.vad_stream` cuts
the stream exactly where the offline segmenter would cut the whole recording).

During a pause that may end an utterance, its result is computed early (on the worker, when it is
free): if the pause lasts, the utterance closes with the same span and the result is ready; the
client also gets it at once as a ``partial`` message. If speech resumes the early result is
dropped, and a speaker session never sees it.

Protocol (see docs/serving.md, "Streaming")::

    connect  ws://HOST/v1/stream?format=pcm16&sample_rate=16000[&session=ID][&normalise=MODE][&merge_gap=S]
             format: pcm16 (little-endian int16, default) | f32 (little-endian float32) | webm
             (a MediaRecorder webm/ogg-opus byte stream, decoded as it grows); mono. sample_rate
             (pcm16/f32, 8000-192000) other than 16000 is resampled (soxr). Subprotocol "koemo" is
             accepted (a browser offering ["koemo", "koemo.key.KEY"] gets "koemo" back).
    server   {"type": "ready", "format", "sample_rate", "max_duration_s", "max_bytes", "segment": {...}}
    client   binary frames of audio, any size (pcm16: whole 2-byte samples, f32: whole 4-byte ones)
    server   {"type": "utterance", "index", "start", "end", "closed_at", "transcript", "label",
              "probabilities", "contribution", "latency_s"} per utterance, in order; start/end/
             closed_at are seconds of the stream (closed_at: how much audio had arrived when VAD
             closed it), latency_s the seconds from receiving the audio that closed it to sending this
    client   {"type": "end"} (text frame): no more audio; the last utterance is closed
    server   {"type": "end", "utterances": n, "duration": s}, then closes (1000)
    errors   {"type": "error", "error", "problem"} then close: 1003 unknown format/rate/parameter,
             1007 malformed frame (odd pcm16 bytes, non-finite floats, text that is not JSON),
             1009 over a limit (says which), 1013 too many streams; an utterance the model cannot
             classify gets {"type": "error", "index", ...} and the stream goes on.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from koemo.data.audio import SAMPLE_RATE
from koemo.errors import KoemoError
from koemo.serving.segment import SegmentConfig
from koemo.serving.vad_stream import StreamSegmenter, Utterance

FORMATS = ("pcm16", "f32", "webm")


# ---- the WebSocket endpoint ----------------------------------------------------------------
class StreamError(Exception):
    """Bad input on a stream: the message for the client and the close code."""
    def __init__(self, problem: str, code: int):
        super().__init__(problem)
        self.problem, self.code = problem, code


class _Decoder:
    """Binary frames -> 16 kHz float32 samples, for one stream's format and sample rate."""

    def __init__(self, fmt: str, sample_rate: int):
        import soxr

        self.fmt, self._resampler = fmt, None
        if fmt != "webm" and sample_rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._bytes, self._fed, self._decoded_at = bytearray(), 0, 0.0  # webm: container so far, samples out

    def frame(self, data: bytes) -> np.ndarray:
        if self.fmt == "webm":
            self._bytes += data
            if time.monotonic() - self._decoded_at < 0.5:
                return np.zeros(0, dtype=np.float32)
            return self._webm(final=False)
        size = 2 if self.fmt == "pcm16" else 4
        if len(data) % size:
            raise StreamError(f"{self.fmt} frames hold whole {size}-byte samples; got a frame of {len(data)} bytes", 1007)
        if self.fmt == "pcm16":
            x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            x = np.frombuffer(data, dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(x)):
                raise StreamError("f32 frame contains NaN or infinite samples", 1007)
        return self._resampler.resample_chunk(x) if self._resampler is not None else x

    def end(self) -> np.ndarray:
        if self.fmt == "webm":
            return self._webm(final=True)
        empty = np.zeros(0, dtype=np.float32)
        return self._resampler.resample_chunk(empty, last=True) if self._resampler is not None else empty

    def _webm(self, final: bool) -> np.ndarray:
        """Decode the whole container so far (what a cut-off tail allows) and return the samples
        not yet handed out, keeping the last 0.1 s back until the end (the resampler's tail)."""
        import io

        import av

        self._decoded_at = time.monotonic()
        chunks = []
        try:
            with av.open(io.BytesIO(bytes(self._bytes))) as container:
                if not container.streams.audio:
                    raise StreamError("webm stream contains no audio track", 1003)
                resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                try:
                    for frame in container.decode(container.streams.audio[0]):
                        chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
                except (av.error.FFmpegError, ValueError):  # the partial last cluster
                    if final and not chunks:
                        raise
                chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
        except (av.error.FFmpegError, ValueError, IndexError) as e:
            if final or len(self._bytes) > 256 * 1024 and not self._fed:
                raise StreamError(f"not a readable webm/ogg audio stream ({str(e).splitlines()[0][:120]})", 1003) from None
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
        upto = len(audio) if final else max(self._fed, len(audio) - SAMPLE_RATE // 10)
        new, self._fed = audio[self._fed : upto], upto
        return new


def _query(ws, config: SegmentConfig) -> dict[str, Any]:
    from dataclasses import replace

    from koemo.serving.sessions import NORMALISE_MODES, SESSION_ID

    q = ws.query_params
    fmt = q.get("format", "pcm16").lower()
    if fmt not in FORMATS:
        raise StreamError(f"format={fmt!r}: use one of {', '.join(FORMATS)}", 1003)
    try:
        rate = int(q.get("sample_rate", SAMPLE_RATE))
    except ValueError:
        raise StreamError(f"sample_rate={q.get('sample_rate')!r} is not a whole number of Hz", 1003) from None
    if fmt != "webm" and not 8000 <= rate <= 192000:
        raise StreamError(f"sample_rate={rate}: use 8000-192000 Hz (other than 16000 is resampled)", 1003)
    session = q.get("session")
    if session is not None and not SESSION_ID.fullmatch(session):
        raise StreamError("a session id is 1-64 letters, digits or ._:-", 1003)
    normalise = q.get("normalise")
    if normalise is not None and normalise not in NORMALISE_MODES:
        raise StreamError(f"normalise must be one of {', '.join(NORMALISE_MODES)}", 1003)
    gap = q.get("merge_gap", str(config.merge_gap_s))  # shorter: answers sooner, splits at shorter pauses
    try:
        config = replace(config, merge_gap_s=float(gap))
    except ValueError:
        config = replace(config, merge_gap_s=-1.0)
    if not 0 <= config.merge_gap_s <= 2:
        raise StreamError(f"merge_gap={gap!r}: use seconds from 0 to 2", 1003)
    early = q.get("early", "1")
    if early not in ("0", "1"):
        raise StreamError(f"early={early!r}: use 1 (compute a result during the pause, the default) or 0", 1003)
    return {"fmt": fmt, "rate": rate, "session": session, "normalise": normalise, "config": config,
            "early": early == "1"}


def register_stream(app, predictor, limits, *, sessions=None, limiter=None) -> None:
    """Add ``/v1/stream`` to ``app``. ``sessions`` (a :class:`Sessions`) resolves ``session=ID``;
    without one a stream is its own session. ``limiter`` (an ``anyio.CapacityLimiter``) is shared
    with ``/v1/predict`` so streams and uploads take turns on the same workers."""
    from koemo.serving.sessions import Session

    limiter = limiter or anyio.CapacityLimiter(max(1, limits.workers))
    active = {"streams": 0}

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        subprotocol = "koemo" if "koemo" in ws.scope.get("subprotocols", []) else None
        await ws.accept(subprotocol=subprotocol)
        send_lock = anyio.Lock()

        async def send(msg: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_text(json.dumps(msg, ensure_ascii=False))

        async def refuse(problem: str, code: int) -> None:
            try:
                await send({"type": "error", "error": f"stream: {problem}", "problem": problem})
                await ws.close(code)
            except (WebSocketDisconnect, RuntimeError):
                pass

        try:
            opts = _query(ws, predictor.segment_config)
        except StreamError as e:
            return await refuse(e.problem, e.code)
        if active["streams"] >= limits.max_streams:
            return await refuse(f"{active['streams']} streams are open, the limit is {limits.max_streams}; retry later", 1013)
        active["streams"] += 1
        try:
            session = sessions.get(opts["session"]) if opts["session"] and sessions is not None else Session()
            await _serve(ws, send, refuse, predictor, limits, limiter, opts, session)
        finally:
            active["streams"] -= 1


class _Early:
    """A result computed during a pause for the utterance that will close if the pause lasts."""

    def __init__(self, utt: Utterance, index: int, received: float, session):
        from koemo.serving.sessions import TrialSession

        self.utt, self.index, self.received = utt, index, received
        self.trial = TrialSession(session)
        self.done = anyio.Event()
        self.result: dict[str, Any] | None = None
        self.error: KoemoError | None = None
        self.taken = False  # the utterance closed with this span: the worker uses the result


def _result(index: int, utt: Utterance, r: dict[str, Any], kind: str = "utterance") -> dict[str, Any]:
    return {"type": kind, "index": index, "start": utt.span.start, "end": utt.span.end,
            "closed_at": utt.closed_at, "transcript": r["transcript"], "label": r["label"],
            "probabilities": r["probabilities"], "contribution": r["contribution"]}


async def _serve(ws, send, refuse, predictor, limits, limiter, opts, session) -> None:
    fmt, rate, normalise, cfg, max_bytes = opts["fmt"], opts["rate"], opts["normalise"], opts["config"], limits.max_upload_bytes
    seg, decoder = await anyio.to_thread.run_sync(StreamSegmenter, cfg), _Decoder(fmt, rate)  # may load silero
    await send({"type": "ready", "format": fmt, "sample_rate": rate, "max_duration_s": limits.max_duration_s,
                "max_bytes": max_bytes, "early": opts["early"],
                "segment": {"min_silence_ms": cfg.min_silence_ms, "merge_gap_s": cfg.merge_gap_s,
                            "pad_ms": cfg.pad_ms, "max_segment_s": cfg.max_segment_s}})
    to_worker, from_reader = anyio.create_memory_object_stream(max_buffer_size=float("inf"))
    count = {"queued": 0, "sent": 0, "done": 0}
    failure: list[StreamError] = []
    state: dict[str, Any] = {"early": None, "tg": None}

    def classify(utt: Utterance, into) -> dict[str, Any]:
        name = f"utterance {utt.span.start:.2f}-{utt.span.end:.2f} s"
        return predictor.predict(utt.audio, name=name, session=into, normalise=normalise)

    async def compute_early(early: _Early) -> None:
        try:
            async with limiter:
                if state["early"] is early or early.taken:  # not already dropped for newer speech
                    early.result = await anyio.to_thread.run_sync(classify, early.utt, early.trial)
        except KoemoError as e:
            early.error = e
        finally:
            early.done.set()
        if early.result is not None and not early.taken and state["early"] is early:
            try:
                await send({**_result(early.index, early.utt, early.result, "partial"),
                            "latency_s": round(time.perf_counter() - early.received, 3)})
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass

    def maybe_early(received: float) -> None:
        """Start an early result when the worker is idle and a pause may close an utterance."""
        if not opts["early"] or count["done"] < count["queued"]:
            return
        current = state["early"]
        if current is not None and not current.done.is_set():
            return
        utt = seg.tentative()
        if utt is None or (current is not None and current.utt.span == utt.span):
            return
        state["early"] = _Early(utt, count["queued"], received, session)
        state["tg"].start_soon(compute_early, state["early"])

    async def worker() -> None:
        async with from_reader:
            async for index, utt, received in from_reader:
                try:
                    early = state["early"]
                    if early is not None and early.index == index and early.utt.span == utt.span:
                        early.taken = True
                        await early.done.wait()
                        if early.error is not None:
                            raise early.error
                        r = early.result
                        if r is None:  # dropped before it ran
                            async with limiter:
                                r = await anyio.to_thread.run_sync(classify, utt, session)
                        else:
                            early.trial.commit()
                    else:
                        async with limiter:
                            r = await anyio.to_thread.run_sync(classify, utt, session)
                    msg = _result(index, utt, r)
                    count["sent"] += 1
                except KoemoError as e:
                    msg = {"type": "error", "index": index, "error": str(e), "problem": getattr(e, "problem", str(e))}
                finally:
                    count["done"] += 1
                    if state["early"] is not None and state["early"].index <= index:
                        state["early"] = None
                try:
                    await send({**msg, "latency_s": round(time.perf_counter() - received, 3)})
                except (WebSocketDisconnect, RuntimeError, OSError):
                    return

    async def queue(utts: list[Utterance], received: float) -> None:
        for utt in utts:
            await to_worker.send((count["queued"], utt, received))
            count["queued"] += 1

    async def read() -> bool:
        """Frames until the client's end (True) or its disconnect (False)."""
        nbytes = 0
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return False
            received = time.perf_counter()
            if msg.get("bytes") is not None:
                nbytes += len(msg["bytes"])
                if nbytes > max_bytes:
                    raise StreamError(f"the stream sent {nbytes / 2**20:.1f} MB; the limit (max_upload_mb) "
                                      f"is {limits.max_upload_mb:g} MB", 1009)
                x = await anyio.to_thread.run_sync(decoder.frame, msg["bytes"])
                if limits.max_duration_s and seg.duration + len(x) / SAMPLE_RATE > limits.max_duration_s:
                    raise StreamError(f"the stream reached {seg.duration + len(x) / SAMPLE_RATE:.1f} s of audio; "
                                      f"the limit (max_duration_s) is {limits.max_duration_s:g} s", 1009)
                await queue(await anyio.to_thread.run_sync(seg.feed, x), received)
                maybe_early(received)
                continue
            try:
                command = json.loads(msg.get("text") or "")
            except ValueError:
                raise StreamError('text frames must be JSON, e.g. {"type": "end"}', 1007) from None
            if not isinstance(command, dict) or command.get("type") != "end":
                raise StreamError(f'unknown message {str(command)[:80]!r}; the only one is {{"type": "end"}}', 1003)
            tail = await anyio.to_thread.run_sync(seg.feed, await anyio.to_thread.run_sync(decoder.end))
            await queue(tail + seg.flush(), received)
            return True

    ended = False
    async with anyio.create_task_group() as tg:
        state["tg"] = tg
        tg.start_soon(worker)
        async with to_worker:  # closing it lets the worker finish the queue and stop
            try:
                ended = await read()
            except StreamError as e:
                failure.append(e)
            except WebSocketDisconnect:
                pass
        if not ended:
            tg.cancel_scope.cancel()
    if failure:
        return await refuse(failure[0].problem, failure[0].code)
    if ended:
        try:
            await send({"type": "end", "utterances": count["sent"], "duration": round(seg.duration, 3)})
            await ws.close(1000)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
