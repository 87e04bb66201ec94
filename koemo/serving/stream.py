"""Streaming recognition: ``/v1/stream``, a WebSocket that takes audio in chunks and answers one
result per utterance as soon as voice activity closes it.

:class:`StreamSegmenter` is the incremental twin of :func:`koemo.serving.segment.speech_spans`:
silero-vad runs on each 32 ms window as it arrives (its recurrent state kept per stream, so streams
do not share it), and silero's own rules plus :class:`SegmentConfig`'s padding and merging are
applied as the windows come, so a stream is cut exactly where the offline segmenter would cut the
whole recording. An utterance is closed once no speech can join it any more: about 1.0 s after its
last speech window (0.1 s padding + the 0.8 s ``merge_gap_s`` + the next utterance's 0.1 s padding),
or when it reaches ``max_segment_s``.

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
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from koemo.data.audio import SAMPLE_RATE
from koemo.errors import KoemoError
from koemo.serving import segment
from koemo.serving.segment import SegmentConfig, Span

WINDOW = 512  # silero-vad's window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window silero prepends
MIN_SILENCE_AT_MAX_SPEECH_MS = 98  # silero's defaults, as speech_spans uses them
FORMATS = ("pcm16", "f32", "webm")


@dataclass(frozen=True)
class Utterance:
    """A closed utterance: span (s of the stream), samples, how much audio had come when it closed (s)."""

    span: Span
    audio: np.ndarray
    closed_at: float


class StreamSegmenter:
    """Feed 16 kHz float32 chunks of any size; get utterances back as they close.

    ``feed`` and ``flush`` return lists of :class:`Utterance`; the spans equal
    ``speech_spans(whole_recording, config)``. Not thread-safe: one stream, one caller at a time.
    Only the audio that a future utterance can still need is kept.
    """

    def __init__(self, config: SegmentConfig | None = None):
        import torch

        self.config = config = config or SegmentConfig()
        with segment._lock:
            self._vad = segment._vad_model()._model  # the 16 kHz network: (x, state) -> (p, state)
        self._state = torch.zeros(0)
        self._ctx = torch.zeros(1, CONTEXT)
        sr = SAMPLE_RATE
        self._pad, self._min_speech = sr * config.pad_ms / 1000, sr * config.min_speech_ms / 1000
        self._min_silence = sr * config.min_silence_ms / 1000
        self._max_speech = sr * config.max_segment_s - WINDOW - 2 * self._pad
        self._min_sil_max = sr * MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
        self._neg = max(config.threshold - 0.15, 0.01)
        # the audio kept (self._buf[0] is sample self._buf_start), samples received, next window's start
        self._buf, self._buf_start, self._n, self._pos = np.zeros(0, dtype=np.float32), 0, 0, 0
        # silero's get_speech_timestamps_from_probs, one window at a time
        self._triggered = False
        self._speech: dict[str, int] = {}
        self._temp_end = self._prev_end = self._next_start = 0
        self._possible_ends: list[tuple[int, int]] = []
        # padding: the last kept speech whose padded end waits for the next one (padded start, raw end)
        self._pending: tuple[int, int] | None = None
        # merging: the utterance the next one may still join (padded start, padded end), samples
        self._merged: tuple[int, int] | None = None
        self._out: list[Utterance] = []
        self._flushed = False

    @property
    def duration(self) -> float:  # seconds of audio received
        return self._n / SAMPLE_RATE

    def feed(self, chunk: np.ndarray) -> list[Utterance]:
        """Add samples (16 kHz mono float32); return the utterances this closed."""
        import torch

        if self._flushed:
            raise KoemoError("stream already flushed")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        end = self._n - self._buf_start + chunk.size
        if end > self._buf.size:  # grow by doubling: one-sample chunks stay cheap
            self._buf = np.concatenate([self._buf, np.zeros(max(end, 2 * self._buf.size) - self._buf.size, np.float32)])
        self._buf[self._n - self._buf_start : end] = chunk
        self._n += chunk.size
        with torch.inference_mode():
            while self._pos + WINDOW <= self._n:
                self._window(self._buf[self._pos - self._buf_start : self._pos - self._buf_start + WINDOW])
        self._trim()
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Utterance]:
        """End of stream: close what is open, as ``speech_spans`` ends a recording."""
        import torch

        if self._flushed:
            return []
        if self._pos < self._n:  # the last, partial window, zero-padded like the offline one
            tail = self._buf[self._pos - self._buf_start : self._n - self._buf_start]
            with torch.inference_mode():
                self._window(np.pad(tail, (0, WINDOW - tail.size)), settle=False)
        self._flushed = True
        if self._speech and (self._n - self._speech["start"]) > self._min_speech:
            self._keep(self._speech["start"], self._n)
        self._speech = {}
        if self._pending is not None:
            start, raw_end = self._pending
            self._pending = None
            self._padded(start, int(min(self._n, raw_end + self._pad)))
        if self._merged is not None:
            self._emit(*self._merged)
            self._merged = None
        out, self._out = self._out, []
        return out

    # ---- silero, one window ----------------------------------------------------------------
    def _window(self, samples: np.ndarray, settle: bool = True) -> None:
        import torch

        x = torch.cat([self._ctx, torch.from_numpy(np.ascontiguousarray(samples)).unsqueeze(0)], 1)
        out, self._state = self._vad.forward(x, self._state)
        self._ctx = x[:, -CONTEXT:]
        self._step(float(out.item()), self._pos)
        self._pos += WINDOW
        if settle:
            self._settle()

    def _step(self, p: float, cur: int) -> None:
        """The body of silero's loop (``use_max_poss_sil_at_max_speech=True``), for window ``cur``."""
        thr = self.config.threshold
        if p >= thr and self._temp_end:
            sil = cur - self._temp_end
            if sil > self._min_sil_max:
                self._possible_ends.append((self._temp_end, sil))
            self._temp_end = 0
            if self._next_start < self._prev_end:
                self._next_start = cur
        if p >= thr and not self._triggered:
            self._triggered = True
            self._speech = {"start": cur}
            return
        if self._triggered and cur - self._speech["start"] > self._max_speech:
            if self._possible_ends:
                self._prev_end, dur = max(self._possible_ends, key=lambda x: x[1])
                self._keep(self._speech["start"], self._prev_end)
                self._speech = {}
                self._next_start = self._prev_end + dur
                if self._next_start < self._prev_end + cur:
                    self._speech = {"start": self._next_start}
                else:
                    self._triggered = False
                self._prev_end = self._next_start = self._temp_end = 0
                self._possible_ends = []
            else:
                self._keep(self._speech["start"], cur)
                self._speech = {}
                self._prev_end = self._next_start = self._temp_end = 0
                self._triggered = False
                self._possible_ends = []
                return
        if p < self._neg and self._triggered:
            if not self._temp_end:
                self._temp_end = cur
            if cur - self._temp_end < self._min_silence:
                return
            if self._temp_end - self._speech["start"] > self._min_speech:
                self._keep(self._speech["start"], self._temp_end)
            self._speech = {}
            self._prev_end = self._next_start = self._temp_end = 0
            self._triggered = False
            self._possible_ends = []

    # ---- padding and merging (speech_spans's rules) ------------------------------------------
    def _frontier(self) -> int:
        """The earliest sample a speech kept from now on can start at."""
        return self._speech["start"] if self._speech else self._pos

    def _keep(self, start: int, end: int) -> None:
        """A speech silero keeps (raw samples): pad it against the previous one."""
        if self._pending is None:
            padded_start = int(max(0, start - self._pad))
        else:
            prev_start, prev_end = self._pending
            gap = start - prev_end
            if gap < 2 * self._pad:
                self._padded(prev_start, prev_end + int(gap // 2))
                padded_start = int(max(0, start - gap // 2))
            else:
                self._padded(prev_start, int(min(self._n, prev_end + self._pad)))
                padded_start = int(max(0, start - self._pad))
        self._pending = (padded_start, end)

    def _padded(self, start: int, end: int) -> None:
        """A padded span: merge it into the open utterance or close that one."""
        cfg = self.config
        if self._merged is None or cfg.merge_gap_s <= 0:
            if self._merged is not None:
                self._emit(*self._merged)
            self._merged = (start, end)
            return
        m_start, m_end = self._merged
        if start / SAMPLE_RATE - m_end / SAMPLE_RATE < cfg.merge_gap_s and \
                end / SAMPLE_RATE - m_start / SAMPLE_RATE <= cfg.max_segment_s:
            self._merged = (m_start, end)
        else:
            self._emit(m_start, m_end)
            self._merged = (start, end)

    def _settle(self) -> None:
        """Close what no future speech can change any more."""
        frontier = self._frontier()
        if self._pending is not None and frontier - self._pending[1] >= 2 * self._pad:
            start, raw_end = self._pending
            self._pending = None
            self._padded(start, int(min(self._n, raw_end + self._pad)))
        if self._merged is not None and self._pending is None:
            gap = self.config.merge_gap_s
            if gap <= 0 or not ((frontier - self._pad) / SAMPLE_RATE - self._merged[1] / SAMPLE_RATE < gap):
                self._emit(*self._merged)
                self._merged = None

    def _emit(self, start: int, end: int) -> None:
        span = Span(round(start / SAMPLE_RATE, 3), round(end / SAMPLE_RATE, 3))
        first = max(0, round(span.start * SAMPLE_RATE))  # as segment.cut
        last = min(self._n, round(span.end * SAMPLE_RATE))
        audio = self._buf[max(0, first - self._buf_start) : max(0, last - self._buf_start)].copy()
        self._out.append(Utterance(span, audio, round(self._n / SAMPLE_RATE, 3)))

    def _trim(self) -> None:
        keep = self._frontier() - int(self._pad) - WINDOW
        for held in (self._pending, self._merged):
            keep = min(keep, held[0]) if held is not None else keep
        keep = min(keep - WINDOW, self._pos)  # rounding of spans to ms; windows not yet run
        if keep - self._buf_start > 4 * SAMPLE_RATE:  # trim in blocks, not on every chunk
            self._buf = self._buf[keep - self._buf_start : self._n - self._buf_start].copy()
            self._buf_start = keep


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
    return {"fmt": fmt, "rate": rate, "session": session, "normalise": normalise, "config": config}


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


async def _serve(ws, send, refuse, predictor, limits, limiter, opts, session) -> None:
    fmt, rate, normalise, cfg, max_bytes = opts["fmt"], opts["rate"], opts["normalise"], opts["config"], limits.max_upload_bytes
    seg, decoder = await anyio.to_thread.run_sync(StreamSegmenter, cfg), _Decoder(fmt, rate)  # may load silero
    await send({"type": "ready", "format": fmt, "sample_rate": rate, "max_duration_s": limits.max_duration_s,
                "max_bytes": max_bytes, "segment": {"min_silence_ms": cfg.min_silence_ms, "merge_gap_s": cfg.merge_gap_s,
                                                    "pad_ms": cfg.pad_ms, "max_segment_s": cfg.max_segment_s}})
    to_worker, from_reader = anyio.create_memory_object_stream(max_buffer_size=float("inf"))
    count = {"queued": 0, "sent": 0}
    failure: list[StreamError] = []

    def classify(utt: Utterance) -> dict[str, Any]:
        name = f"utterance {utt.span.start:.2f}-{utt.span.end:.2f} s"
        return predictor.predict(utt.audio, name=name, session=session, normalise=normalise)

    async def worker() -> None:
        async with from_reader:
            async for index, utt, received in from_reader:
                try:
                    async with limiter:
                        r = await anyio.to_thread.run_sync(classify, utt)
                    msg = {"type": "utterance", "index": index, "start": utt.span.start, "end": utt.span.end,
                           "closed_at": utt.closed_at, "transcript": r["transcript"], "label": r["label"],
                           "probabilities": r["probabilities"], "contribution": r["contribution"]}
                    count["sent"] += 1
                except KoemoError as e:
                    msg = {"type": "error", "index": index, "error": str(e), "problem": getattr(e, "problem", str(e))}
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
