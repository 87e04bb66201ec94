"""Voice activity on a stream: :class:`StreamSegmenter` cuts audio that arrives in chunks into
utterances exactly where :func:`koemo.serving.segment.speech_spans` cuts the whole recording.

silero-vad runs on each 32 ms window as it arrives (its recurrent state kept per stream, so streams
do not share it), and silero's own rules plus :class:`SegmentConfig`'s padding and merging are
applied as the windows come. An utterance is closed once no speech can join it any more: about
1.0 s after its last speech window (0.1 s padding + the 0.8 s ``merge_gap_s`` + the next
utterance's 0.1 s padding), or when it reaches ``max_segment_s``. :meth:`StreamSegmenter.tentative`
says, during a pause, which utterance will close if the pause lasts, so its result can be
computed while the segmenter waits to be sure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from koemo.data.audio import SAMPLE_RATE
from koemo.errors import KoemoError
from koemo.serving import segment
from koemo.serving.segment import SegmentConfig, Span

WINDOW = 512  # silero-vad's window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window silero prepends
MIN_SILENCE_AT_MAX_SPEECH_MS = 98  # silero's defaults, as speech_spans uses them


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

    def tentative(self) -> Utterance | None:
        """During a pause after speech: the utterance that will close if no speech follows
        (same span and samples as :meth:`feed` will return then), else None.

        silero has marked where the speech stopped (``temp_end``) but waits ``min_silence_ms``
        to be sure, and merging waits ``merge_gap_s`` more; the utterance is known as soon as its
        end padding has arrived. Changes nothing: the state is put back.
        """
        if self._flushed or not self._speech or not self._temp_end:
            return None
        start, end = self._speech["start"], self._temp_end
        if end - start <= self._min_speech or self._n < end + self._pad:
            return None
        saved = (self._pending, self._merged, self._out)
        try:
            self._out = []
            self._keep(start, end)
            padded_start, raw_end = self._pending
            self._pending = None
            self._padded(padded_start, int(min(self._n, raw_end + self._pad)))
            if self._merged is not None:
                self._emit(*self._merged)
            return self._out[-1] if self._out else None
        finally:
            self._pending, self._merged, self._out = saved

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
