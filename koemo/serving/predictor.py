"""The product path: audio -> ASR text -> speech + text encoders -> fusion -> emotion distribution.

A :class:`Predictor` holds the loaded models (once per process) and turns one recording into a
result dict. Recordings longer than ``Limits.segment_over_s`` are cut into utterances by voice
activity (:mod:`koemo.serving.segment`); each utterance is classified on its own and the recording's
distribution is the duration-weighted mean of its utterances'. A shorter recording is one
utterance, cut to its speech (:func:`~koemo.serving.segment.trimmed_span`).
"""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from koemo.data.audio import SAMPLE_RATE
from koemo.errors import BadInputError, KoemoError
from koemo.fusion.inputs import Moments, Normaliser, clip_stats, stats_view, view
from koemo.serving.limits import Limits
from koemo.serving.segment import SegmentConfig, Span, cut, speech_spans, too_short, trimmed_span
from koemo.serving.sessions import NORMALISE_MODES, Session

STAGES = ("asr", "speech_encoder", "text_encoder", "fusion")


class Transcriber(Protocol):
    def transcribe(self, audio: np.ndarray) -> str: ...


class Encoder(Protocol):
    def __call__(self, x: Any) -> Any: ...


#: (speech features, text features) -> (probabilities over labels, {"audio": a, "text": t} or None)
Classifier = Callable[[Any, Any], "tuple[np.ndarray, dict[str, float] | None]"]


@dataclass(frozen=True)
class ClipStats:
    """An utterance's frame statistics over time (:func:`~koemo.fusion.inputs.clip_stats`)."""

    stats: np.ndarray


@dataclass
class SpeechStage:
    """The speech encoder's frames -> what the head reads (:mod:`koemo.fusion.inputs`): frames or
    clip statistics, standardised by a group's statistics (a session, a recording) or the
    training corpus's. ``normaliser`` None: the frames as they come."""

    view: str = "frames"
    normaliser: Normaliser | None = None
    pool: int = 1
    layers: tuple[int, ...] | None = None  # of stacked frames, those the head reads (None: all)

    def __call__(self, frames: np.ndarray | ClipStats, group: Moments | None) -> np.ndarray:
        """The head's input from an utterance's frames (or their :meth:`summary`) in ``group``."""
        mean_sd = self.normaliser.stats_for(group) if self.normaliser is not None else (None, None)
        if isinstance(frames, ClipStats):
            return stats_view(frames.stats, *mean_sd, self.layers)
        return view(frames, self.view, *mean_sd, pool=self.pool, layers=self.layers)

    def summary(self, frames: np.ndarray) -> np.ndarray | ClipStats:
        """What an utterance's frames are kept as until its group is known: for the stats view
        their statistics over time (any group's standardisation follows from them exactly), else
        the frames."""
        return ClipStats(clip_stats(frames)) if self.compact else frames

    @property
    def compact(self) -> bool:
        """Whether :meth:`summary` is small (the stats view): a batch can keep every file's."""
        return self.view == "stats"

    def uses_corpus(self, group: Moments | None) -> bool:
        """Whether ``group``'s frames are standardised by the training corpus's statistics."""
        return self.normaliser is not None and self.normaliser.uses_corpus(group)


@dataclass
class Encoded:
    """A recording through ASR and the encoders, before normalisation and the head
    (:meth:`Predictor.encode`). A batch keeps one per file while it sums every file's statistics
    (:meth:`koemo.Recognizer.iter_batch`), so each file's encoders run once."""

    duration: float  # seconds of audio
    spans: list[Span]
    utterances: list[tuple[str, Any, Any]]  # (transcript, SpeechStage.summary of the frames, text features)
    moments: Moments | None  # the recording's frame statistics (None without a normaliser)
    timings: dict[str, float]
    warnings: list[str]
    seconds: float  # wall time of the encoding


@dataclass
class Predictor:
    """Loaded models plus the labels they predict; ``predict`` is safe to call from many threads."""

    labels: tuple[str, ...]
    asr: Transcriber
    speech_encoder: Encoder  # 16 kHz audio -> features
    text_encoder: Encoder  # text -> features
    classify: Classifier
    info: dict[str, Any] = field(default_factory=dict)  # what GET /v1/model shows
    speech_stage: SpeechStage = field(default_factory=SpeechStage)
    limits: Limits = field(default_factory=Limits)
    segment_config: SegmentConfig = field(default_factory=SegmentConfig)
    # The probabilities of a clip standardised by the corpus statistics (a lone clip) are raised to
    # this power and renormalised: T / T_lone, the bundle's two temperatures (koemo.training.final),
    # which turns softmax(z / T) into softmax(z / T_lone).
    lone_power: float = 1.0
    # A second head for those clips (the bundle's lone/, train.lone_head), with its own temperature
    # applied; where set it replaces ``classify`` and ``lone_power`` for them.
    classify_lone: Classifier | None = None
    # the speech input that head reads, where it differs from the first head's (its own layers)
    speech_stage_lone: SpeechStage | None = None
    # Models that keep state between calls (or are not thread-safe) run under this lock when set.
    serial: bool = False
    # Run the speech encoder in a helper thread while ASR and the text encoder run.
    overlap: bool = True
    # audio -> (transcript, speech features, {"asr": s, "speech_encoder": s}) from one encoder
    # pass (koemo.asr.shared_pass); when set it replaces ``asr`` + ``speech_encoder`` in predict.
    joint: Callable[[np.ndarray], tuple[str, Any, dict[str, float]]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pool: Any = field(default=None, repr=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _side_pool(self):
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(max(1, self.limits.workers), thread_name_prefix="koemo-speech")
        return self._pool

    # ---- prediction ----------------------------------------------------------------------
    def predict(self, audio: np.ndarray, *, name: str = "<audio>", session: Session | None = None,
                normalise: str | None = None, update_session: bool = True) -> dict[str, Any]:
        """Classify one recording (16 kHz mono float32).

        ``normalise`` (for a bundle trained with speaker normalisation): ``speaker`` standardises
        the voice by ``session``'s statistics (this recording's added first; with
        ``update_session`` False the session is taken as it is, :meth:`observe` having added the
        recording already), ``file`` by this recording's own (its utterances), ``none``
        by the training corpus's; groups of too few utterances fall back to the corpus. Default:
        ``speaker`` with a session, else ``file``.

        Returns ``{transcript, probabilities{label: p}, label, segments[{start, end, transcript,
        label, probabilities, contribution}], contribution{audio, text}, timings{stage: s},
        duration, warnings[str]}`` (``warnings``: utterances too short to judge).
        """
        mode = _mode(normalise, session)
        return self.finish(self.encode(audio, name=name), session=session, normalise=mode,
                           update_session=update_session)

    def encode(self, audio: np.ndarray, *, name: str = "<audio>") -> Encoded:
        """ASR and both encoders over one recording (16 kHz mono float32), before any
        normalisation: :meth:`finish` classifies it once its group is known."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise BadInputError(name, "zero-length audio (no samples)")
        t_start = time.perf_counter()
        timings = {stage: 0.0 for stage in STAGES}
        spans = self._spans(audio, name, timings)
        utterances, moments = [], None
        for span in spans:
            transcript, frames, text = self._encode_utterance(cut(audio, span), timings)
            if self.speech_stage.normaliser is not None:
                m = Moments.of(frames)
                moments = m if moments is None else moments + m
            utterances.append((transcript, self.speech_stage.summary(frames), text))
        warnings = [w for w in (too_short(audio, span, self.segment_config) for span in spans) if w]
        return Encoded(len(audio) / SAMPLE_RATE, spans, utterances, moments, timings, warnings,
                       time.perf_counter() - t_start)

    def finish(self, encoded: Encoded, *, session: Session | None = None, normalise: str | None = None,
               update_session: bool = True) -> dict[str, Any]:
        """:meth:`predict`'s result for a recording :meth:`encode` has run on (``normalise``,
        ``session`` and ``update_session`` as there)."""
        mode = _mode(normalise, session)
        t_start = time.perf_counter()
        timings = dict(encoded.timings)
        group = None
        if mode != "none" and encoded.moments is not None:
            group = encoded.moments
            if mode == "speaker" and session is not None:
                # update_session=False: the session already holds this recording (observe() first)
                group = session.add(group) if update_session else (session.moments or group)
        segments = []
        lone = self.speech_stage.uses_corpus(group)
        second = lone and self.classify_lone is not None
        classify = self.classify_lone if second else self.classify
        stage = self.speech_stage_lone if second and self.speech_stage_lone is not None else self.speech_stage
        power = self.lone_power if lone and self.classify_lone is None else 1.0
        for span, (transcript, speech, text) in zip(encoded.spans, encoded.utterances):
            seg = self._classify(transcript, stage(speech, group), text, timings, power, classify)
            segments.append({"start": span.start, "end": span.end, **seg})

        weights = np.array([max(s["end"] - s["start"], 1e-3) for s in segments])
        weights = weights / weights.sum()
        probs = sum(w * np.array([s["probabilities"][lab] for lab in self.labels]) for w, s in zip(weights, segments))
        probs = probs / probs.sum()
        contribution = None
        if all(s.get("contribution") for s in segments):
            contribution = {
                k: float(sum(w * s["contribution"][k] for w, s in zip(weights, segments)))
                for k in ("audio", "text")
            }
        timings["total"] = encoded.seconds + time.perf_counter() - t_start
        return {
            "transcript": " ".join(s["transcript"] for s in segments if s["transcript"]),
            "probabilities": {lab: float(p) for lab, p in zip(self.labels, probs)},
            "label": self.labels[int(np.argmax(probs))],
            "segments": segments,
            "contribution": contribution,
            "duration": round(encoded.duration, 3),
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "warnings": list(encoded.warnings),
        }

    def observe(self, audio: np.ndarray, session: Session, *, name: str = "<audio>") -> None:
        """Add a recording's speech statistics to ``session`` without classifying it (the first
        pass of ``koemo predict --normalise speaker``: every file of the call, then each one)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise BadInputError(name, "zero-length audio (no samples)")
        timings = {stage: 0.0 for stage in STAGES}
        frames = [self.speech_encoder(cut(audio, span)) for span in self._spans(audio, name, timings)]
        session.add(Moments.sum(Moments.of(f) for f in frames))

    def _spans(self, audio: np.ndarray, name: str, timings: dict[str, float]) -> list[Span]:
        duration = len(audio) / SAMPLE_RATE
        if self.limits.segment_over_s and duration > self.limits.segment_over_s:
            t0 = time.perf_counter()
            spans = speech_spans(audio, self.segment_config)
            timings["vad"] = timings.get("vad", 0.0) + time.perf_counter() - t0
            if not spans:
                raise BadInputError(name, f"no speech found in {duration:.1f} s of audio")
            return spans
        return [trimmed_span(audio, self.segment_config)]

    def _encode_utterance(self, audio: np.ndarray, timings: dict[str, float]):
        """(transcript, speech frames, text features) of one utterance."""
        if self.serial:
            with self._lock:
                return self._run_encoders(audio, timings)
        return self._run_encoders(audio, timings)

    def _run_encoders(self, audio: np.ndarray, timings: dict[str, float]):
        if self.joint is not None:
            # One Whisper encoder pass gives the speech features and the decoder's input.
            transcript, speech, split = self.joint(audio)
            text, t_text = _timed(self.text_encoder, transcript)
            t_asr, t_speech = split["asr"], split["speech_encoder"]
        elif self.overlap:
            # The speech encoder does not need the transcript: run it beside ASR -> text encoder.
            # faster-whisper's decoder leaves cores idle, so this shortens the wall time.
            # (in this request's context: its log lines carry the request id)
            speech_job = self._side_pool().submit(contextvars.copy_context().run, _timed, self.speech_encoder, audio)
            try:
                transcript, t_asr = _timed(self.asr.transcribe, audio)
                text, t_text = _timed(self.text_encoder, transcript)
            finally:
                speech, t_speech = speech_job.result()
        else:
            transcript, t_asr = _timed(self.asr.transcribe, audio)
            speech, t_speech = _timed(self.speech_encoder, audio)
            text, t_text = _timed(self.text_encoder, transcript)
        for stage, dt in zip(STAGES, (t_asr, t_speech, t_text)):
            timings[stage] += dt
        return transcript, speech, text

    def _classify(self, transcript: str, speech, text, timings: dict[str, float], power: float,
                  classify: Classifier) -> dict[str, Any]:
        if self.serial:
            with self._lock:
                (probs, contribution), t_fusion = _timed(classify, speech, text)
        else:
            (probs, contribution), t_fusion = _timed(classify, speech, text)
        timings["fusion"] += t_fusion
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        if probs.shape[0] != len(self.labels) or not np.all(np.isfinite(probs)):
            raise KoemoError(f"model returned {probs.shape[0]} scores for {len(self.labels)} labels")
        probs = probs / probs.sum()
        if power != 1.0:
            probs = probs ** power
            probs = probs / probs.sum()
        return {
            "transcript": transcript,
            "label": self.labels[int(np.argmax(probs))],
            "probabilities": {lab: float(p) for lab, p in zip(self.labels, probs)},
            "contribution": {k: float(v) for k, v in contribution.items()} if contribution else None,
        }

    def describe(self) -> dict[str, Any]:
        """Labels, encoders, versions: the body of ``GET /v1/model``."""
        from koemo import __version__

        return {"labels": list(self.labels), "koemo_version": __version__, **self.info}


def _mode(normalise: str | None, session: Session | None) -> str:
    mode = normalise or ("speaker" if session is not None else "file")
    if mode not in NORMALISE_MODES:
        raise KoemoError(f"normalise={mode!r}: use one of {', '.join(NORMALISE_MODES)}")
    return mode


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0
