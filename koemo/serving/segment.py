"""Voice activity segmentation: cut a long recording into utterances with timestamps.

Uses silero-vad's JIT model, whose weights ship inside the ``silero-vad`` PyPI package (nothing is
downloaded). The model is loaded once per process and shared behind a lock: it keeps recurrent
state between windows, so two threads must not run it at the same time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from koemo.data.audio import SAMPLE_RATE, speech_bounds


@dataclass(frozen=True)
class Span:
    """One utterance: seconds from the start of the recording."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentConfig:
    """How a recording is cut into utterances."""

    threshold: float = 0.5  # silero speech probability above which a window is speech
    min_speech_ms: int = 250  # shorter speech islands are dropped
    min_silence_ms: int = 500  # a pause at least this long ends an utterance
    pad_ms: int = 100  # padding kept either side of each utterance
    max_segment_s: float = 12.0  # longer speech is split (at the longest pause if there is one)
    merge_gap_s: float = 0.8  # utterances closer than this are merged (within max_segment_s; 0 = never)
    # A recording short enough to stay whole is cut to its speech plus this margin (s): the 10 ms
    # frames within trim_range_db of its loudest one (trimmed_span); None keeps it whole.
    trim_margin_s: float | None = 0.25
    trim_range_db: float = 40.0
    # An utterance with less speech than this (s; its frames within trim_range_db of its loudest)
    # is flagged "too short to judge": Whisper makes up a sentence for a 0.3 s clip, and the head
    # answers with confidence (the paper drops clips under 0.5 s from its data).
    min_speech_s: float = 0.5


_lock = threading.Lock()
_model = None


def _silero():
    """``import silero_vad``, which calls ``torch.set_num_threads(1)`` as a side effect; the
    caller's thread count is restored so the encoders in the same process keep their parallelism."""
    from koemo.threads import torch_threads_kept

    with torch_threads_kept():
        import silero_vad
    return silero_vad


def _vad_model():
    """The bundled silero-vad JIT model (``silero_vad/data/silero_vad.jit``), loaded once."""
    global _model
    if _model is None:
        import warnings

        with warnings.catch_warnings():  # the package's own importlib/jit deprecation notices
            warnings.simplefilter("ignore", DeprecationWarning)
            model = _silero().load_silero_vad(onnx=False)
        model.eval()
        _model = model
    return _model


def speech_spans(audio: np.ndarray, config: SegmentConfig = SegmentConfig()) -> list[Span]:
    """Utterance spans (seconds) in 16 kHz mono ``audio``; ``[]`` when nobody speaks."""
    import torch

    get_speech_timestamps = _silero().get_speech_timestamps
    if audio.size == 0:
        return []
    wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    with _lock:
        model = _vad_model()
        with torch.inference_mode():
            stamps = get_speech_timestamps(
                wav,
                model,
                threshold=config.threshold,
                sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=config.min_speech_ms,
                max_speech_duration_s=config.max_segment_s,
                min_silence_duration_ms=config.min_silence_ms,
                speech_pad_ms=config.pad_ms,
            )
        model.reset_states()
    spans = [Span(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]
    if config.merge_gap_s > 0 and spans:
        merged = [spans[0]]
        for span in spans[1:]:
            last = merged[-1]
            if span.start - last.end < config.merge_gap_s and span.end - last.start <= config.max_segment_s:
                merged[-1] = Span(last.start, span.end)
            else:
                merged.append(span)
        spans = merged
    return [Span(round(s.start, 3), round(s.end, 3)) for s in spans]


def with_trim(config: SegmentConfig, margin_s: float | None) -> SegmentConfig:
    """``config`` with ``trim_margin_s`` set from a command-line margin: None leaves the one the
    loader set (the bundle's ``encoders.trim_margin``, else the default); negative keeps short
    recordings whole."""
    import dataclasses

    if margin_s is None:
        return config
    return dataclasses.replace(config, trim_margin_s=None if margin_s < 0 else float(margin_s))


def trimmed_span(audio: np.ndarray, config: SegmentConfig = SegmentConfig()) -> Span:
    """The span of a recording's speech plus ``config.trim_margin_s`` either side: from the first
    to the last 10 ms frame within ``config.trim_range_db`` of the loudest frame.

    Why: the pooled heads read the mean and spread of every frame, and silence is frames too. A
    lone clip padded with 2 s of silence either side scored 0.26 instead of 0.57 (text-neutral
    protocol, docs/voice.md, "Silence at the edges"); cut to its speech it scores the same
    whatever margins the corpus it came from left. The default margin, 0.25 s, keeps Whisper's
    transcripts as good as the whole clip's (0.1 s cost 0.5 points of CER). Level-relative, so a
    quiet recording is cut like a loud one; a recording without a quiet edge (noise, music)
    stays whole (:func:`koemo.data.audio.speech_bounds`, which training clips are cut with too
    where a recipe sets ``encoders.trim_margin``)."""
    if config.trim_margin_s is None:
        return Span(0.0, round(len(audio) / SAMPLE_RATE, 3))
    return Span(*speech_bounds(audio, config.trim_margin_s, config.trim_range_db))


def cut(audio: np.ndarray, span: Span) -> np.ndarray:
    first = max(0, int(round(span.start * SAMPLE_RATE)))
    last = min(len(audio), int(round(span.end * SAMPLE_RATE)))
    return audio[first:last]


def too_short(audio: np.ndarray, span: Span, config: SegmentConfig = SegmentConfig()) -> str | None:
    """A warning when the utterance ``span`` of ``audio`` holds less speech than
    ``config.min_speech_s``, else None."""
    start, end = speech_bounds(cut(audio, span), 0.0, config.trim_range_db)
    if end - start >= config.min_speech_s:
        return None
    return (f"{span.start:.2f}-{span.end:.2f} s: {end - start:.2f} s of speech, too short to judge "
            f"(under {config.min_speech_s:g} s); the label is a guess")
