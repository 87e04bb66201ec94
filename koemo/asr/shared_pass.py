"""One Whisper encoder pass per clip, shared by the emotion head and the recogniser.

Why: ``predict`` ran the Whisper base encoder twice over the same 30 s window, once inside
faster-whisper for the transcript and once as the speech encoder. Here the speech encoder's own
pass (:meth:`koemo.encoders.whisper.WhisperBaseEncoder.encode_windows`) gives both the emotion
features (unchanged, so they are exactly what the bundle was trained on) and the final-layer
output that CTranslate2's ``Whisper.generate`` decodes.

faster-whisper's per-window decoding (``generate_segments`` / ``generate_with_fallback``,
faster-whisper 1.2.1) is re-implemented for the settings :data:`koemo.asr.whisper.GUARDS` uses:
greedy, Korean forced, timestamps on, no conditioning on previous text, temperature fallback on a
compression ratio over 2.4 or an average log-probability under -1.0, a window skipped as silence
when its no-speech probability is over 0.6 and its log-probability under -1.0, and the seek that
follows the timestamps (a window whose last segment is unfinished is decoded again from the last
timestamp, which needs a second encoder pass for that rest; counted in ``extra_passes``).

What cannot be kept: faster-whisper's VAD filter cuts non-speech out *before* encoding, which would
change the emotion features. Here Silero VAD only decides whether the clip holds speech at all
(none: "" without decoding, as faster-whisper gives); silence inside a clip is left to the
no-speech guard. ``benchmarks/bench_shared_pass.py`` measures what this changes (docs/asr.md).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from koemo.asr.whisper import GUARDS, WhisperBackend, _model_fingerprint
from koemo.data.audio import SAMPLE_RATE, SILENCE_PEAK
from koemo.threads import torch_threads_kept

HOP = 160  # mel hop: 100 mel frames per second
N_FRAMES = 3000  # mel frames in a 30 s window
TIME_PRECISION = 0.02  # seconds per timestamp token
MAX_LENGTH = 448  # Whisper's decoder context
AFTER_END_S = 0.5  # DecodeOptions.after_end_s where the encoder saw only the clip


@dataclass(frozen=True)
class DecodeOptions:
    """faster-whisper's ``TranscriptionOptions`` as koemo sets them (``GUARDS``, beam 1)."""

    temperatures: tuple[float, ...] = tuple(GUARDS["temperature"])
    compression_ratio_threshold: float | None = GUARDS["compression_ratio_threshold"]
    log_prob_threshold: float | None = GUARDS["log_prob_threshold"]
    no_speech_threshold: float | None = GUARDS["no_speech_threshold"]
    beam_size: int = 1
    best_of: int = 5
    patience: float = 1.0
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    suppress_blank: bool = True
    max_initial_timestamp: float = 1.0
    #: drop a segment that starts this close to the end of the audio or later (None: keep all).
    #: Set where the encoder saw only the clip (``window="clip"``): with 1 s of padding instead of
    #: 25 the decoder often reads the sentence again in timestamps past the audio's end.
    after_end_s: float | None = None


@dataclass
class Attempt:
    """One decode of a window: CTranslate2's result and the numbers the guards read."""

    result: Any
    avg_logprob: float
    temperature: float
    compression_ratio: float

    @property
    def tokens(self) -> list[int]:
        return list(self.result.sequences_ids[0])


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes (faster-whisper's ``get_compression_ratio``): repetitive
    text compresses well, so a high ratio flags a decoder stuck in a loop."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def generate_with_fallback(model, encoder_output, prompt: list[int], decode: Callable[[list[int]], str],
                           options: DecodeOptions, suppress_tokens: Sequence[int]) -> Attempt:
    """Decode one window, retrying at the next temperature while the result looks repetitive or
    improbable (not when it looks like silence); if every temperature fails, the most probable
    result among those that are not repetitive (else among all)."""
    attempts, below_cr = [], []
    max_initial = round(options.max_initial_timestamp / TIME_PRECISION)
    temperature = options.temperatures[0]
    for temperature in options.temperatures:
        if temperature > 0:
            kwargs = {"beam_size": 1, "num_hypotheses": options.best_of, "sampling_topk": 0,
                      "sampling_temperature": temperature}
        else:
            kwargs = {"beam_size": options.beam_size, "patience": options.patience}
        result = model.generate(
            encoder_output, [prompt], length_penalty=options.length_penalty,
            repetition_penalty=options.repetition_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size,
            max_length=MAX_LENGTH, return_scores=True, return_no_speech_prob=True,
            suppress_blank=options.suppress_blank, suppress_tokens=list(suppress_tokens),
            max_initial_timestamp_index=max_initial, **kwargs,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * (len(tokens) ** options.length_penalty) / (len(tokens) + 1)
        attempt = Attempt(result, avg_logprob, temperature, compression_ratio(decode(tokens).strip()))
        attempts.append(attempt)
        needs_fallback = False
        if options.compression_ratio_threshold is not None:
            if attempt.compression_ratio > options.compression_ratio_threshold:
                needs_fallback = True  # too repetitive
            else:
                below_cr.append(attempt)
        if options.log_prob_threshold is not None and avg_logprob < options.log_prob_threshold:
            needs_fallback = True  # too improbable
        if _silence(attempt, options):
            needs_fallback = False  # silence: the no-speech check skips it
        if not needs_fallback:
            return attempt
    best = max(below_cr or attempts, key=lambda a: a.avg_logprob)
    return Attempt(best.result, best.avg_logprob, temperature, best.compression_ratio)


def _silence(attempt: Attempt, options: DecodeOptions) -> bool:
    return (options.no_speech_threshold is not None and options.log_prob_threshold is not None
            and attempt.result.no_speech_prob > options.no_speech_threshold
            and attempt.avg_logprob < options.log_prob_threshold)


def is_no_speech(attempt: Attempt, options: DecodeOptions) -> bool:
    """faster-whisper's window skip: no-speech probability over the threshold, unless the
    average log-probability is high enough to trust the text anyway."""
    if options.no_speech_threshold is None:
        return False
    skip = attempt.result.no_speech_prob > options.no_speech_threshold
    if options.log_prob_threshold is not None and attempt.avg_logprob > options.log_prob_threshold:
        skip = False
    return skip


def split_segments(tokens: list[int], timestamp_begin: int, time_offset: float, segment_size: int,
                   seek: int) -> tuple[list[tuple[float, float, list[int]]], int]:
    """faster-whisper's ``_split_segments_by_timestamps``: the window's ``(start, end, tokens)``
    segments and the next seek (mel frames). A window ending in an unfinished segment (two
    timestamps in a row, then text without a closing one) drops that segment and seeks to the last
    timestamp, so the rest is decoded again."""
    ts = timestamp_begin
    single_ending = len(tokens) >= 2 and tokens[-2] < ts <= tokens[-1]
    consecutive = [i for i in range(1, len(tokens)) if tokens[i] >= ts and tokens[i - 1] >= ts]
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_ending else [])
        segments, last = [], 0
        for cut in slices:
            part = tokens[last:cut]
            segments.append((time_offset + (part[0] - ts) * TIME_PRECISION,
                             time_offset + (part[-1] - ts) * TIME_PRECISION, part))
            last = cut
        if single_ending:
            return segments, seek + segment_size
        return segments, seek + (tokens[last - 1] - ts) * 2  # 2 mel frames per timestamp step
    duration = segment_size * HOP / SAMPLE_RATE
    stamps = [t for t in tokens if t >= ts]
    if stamps and stamps[-1] != ts:
        duration = (stamps[-1] - ts) * TIME_PRECISION
    return [(time_offset, time_offset + duration, tokens)], seek + segment_size


@dataclass
class WindowDecoder:
    """Transcribe a clip from encoder outputs already computed, window by window, as
    faster-whisper's ``generate_segments`` does. ``encode_at(seek)`` gives the encoder output of
    the 30 s window starting at mel frame ``seek`` when that is not a whole-window boundary."""

    model: Any  # ctranslate2.models.Whisper (or a fake with .generate)
    tokenizer: Any  # faster_whisper.tokenizer.Tokenizer: sot_sequence, timestamp_begin, decode
    suppress_tokens: Sequence[int]
    options: DecodeOptions = field(default_factory=DecodeOptions)

    def transcribe(self, windows: Sequence[Any], n_samples: int, encode_at: Callable[[int], Any]) -> tuple[str, int]:
        """The transcript and the number of extra encoder passes it took."""
        content_frames = n_samples // HOP  # faster-whisper pads 160 samples, then drops one frame
        audio_end = content_frames * HOP / SAMPLE_RATE
        prompt = list(self.tokenizer.sot_sequence)
        texts, seek, extra = [], 0, 0
        while seek < content_frames:
            segment_size = min(N_FRAMES, content_frames - seek)
            if seek % N_FRAMES == 0 and seek // N_FRAMES < len(windows):
                encoder_output = windows[seek // N_FRAMES]
            else:
                encoder_output, extra = encode_at(seek), extra + 1
            attempt = generate_with_fallback(self.model, encoder_output, prompt, self.tokenizer.decode,
                                             self.options, self.suppress_tokens)
            if is_no_speech(attempt, self.options):
                seek += segment_size
                continue
            segments, next_seek = split_segments(attempt.tokens, self.tokenizer.timestamp_begin,
                                                 seek * HOP / SAMPLE_RATE, segment_size, seek)
            # an unfinished segment right at the window start would decode the same window forever
            seek = next_seek if next_seek > seek else seek + segment_size
            for start, end, tokens in segments:
                if self.options.after_end_s is not None and start >= audio_end - self.options.after_end_s:
                    continue  # a segment the audio has no room for: the decoder read the clip again
                text = self.tokenizer.decode(tokens)
                if start != end and text.strip():
                    texts.append(text.strip())
        return " ".join(" ".join(texts).split()), extra


def shares_pass(speech_encoder, asr_name: str) -> bool:
    """Whether ``speech_encoder`` computes what the ``asr_name`` recogniser's decoder reads: the
    packaged whisper-base encoder with its final layer (``layer`` last or ``all``, either backend)
    and the packaged whisper-base recogniser, over the same model files."""
    if asr_name != "whisper-base" or getattr(speech_encoder, "name", "") != "whisper-base-encoder":
        return False
    if getattr(speech_encoder, "layer", 0) not in (None, "all") or not hasattr(speech_encoder, "encode_windows"):
        return False
    from koemo.models import installed_path

    return Path(speech_encoder.model_dir).resolve() == Path(installed_path("whisper-base")).resolve()


class SharedWhisper:
    """The speech encoder's pass -> (transcript, frames). ``transcribe`` makes it usable as a
    recogniser; ``joint`` is what :class:`koemo.serving.predictor.Predictor` calls."""

    name = "whisper-base"
    compute_type = WhisperBackend.compute_type  # the decoder's weights, as faster-whisper runs them

    def __init__(self, speech_encoder, *, model_dir: str | Path | None = None, vad: bool = True,
                 options: DecodeOptions | None = None, cpu_threads: int | None = None,
                 compute_type: str | None = None):
        import ctranslate2
        import tokenizers
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.encoder = speech_encoder
        self.model_dir = Path(model_dir or speech_encoder.model_dir)
        self.vad = vad
        self.compute_type = compute_type or self.compute_type
        with torch_threads_kept():  # CTranslate2 sets the process's OpenMP thread count
            self.model = ctranslate2.models.Whisper(
                str(self.model_dir), device="cpu", compute_type=self.compute_type, inter_threads=1,
                intra_threads=cpu_threads or WhisperBackend.cpu_threads)
        hf = tokenizers.Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer = Tokenizer(hf, self.model.is_multilingual, task="transcribe", language=WhisperBackend.language)
        if options is None:
            # "clip": the window that feeds the decoder only the clip's frames (the others give it 1500)
            short = getattr(speech_encoder, "window", "30s") == "clip"
            options = DecodeOptions(after_end_s=AFTER_END_S if short else None)
        self.decoder = WindowDecoder(self.model, tokenizer, get_suppressed_tokens(tokenizer, [-1]), options)
        self.extra_passes = 0  # windows decoded again from a mid-window timestamp (a second encoder pass)
        self.no_speech_clips = 0  # clips Silero VAD found without speech ("" without decoding)

    def params(self) -> dict[str, Any]:
        """What decides the transcript (as :meth:`WhisperBackend.params`, plus the pass)."""
        import faster_whisper

        options = asdict(self.decoder.options)
        if options["after_end_s"] is None:
            del options["after_end_s"]  # off: the key transcripts were cached under before it existed
        return {"model_sha256": _model_fingerprint(self.model_dir), "compute_type": self.compute_type,
                "faster_whisper": faster_whisper.__version__, "language": WhisperBackend.language,
                "shared_pass": getattr(self.encoder, "id", ""), "vad": "no-speech-clip" if self.vad else None,
                **options}

    def joint(self, audio: np.ndarray) -> tuple[str, np.ndarray, dict[str, float]]:
        """(transcript, speech frames, {"speech_encoder": s, "asr": s}): the pass (mel + encoder)
        counts as the speech encoder, VAD + decoding as ASR."""
        t0 = time.perf_counter()
        frames, final = self.encoder.encode_windows(audio)
        t1 = time.perf_counter()
        transcript = self.decode(audio, final)
        return transcript, frames, {"speech_encoder": t1 - t0, "asr": time.perf_counter() - t1}

    def transcribe(self, audio: np.ndarray) -> str:
        return self.joint(audio)[0]

    def decode(self, audio: np.ndarray, final: Sequence[np.ndarray]) -> str:
        """The transcript of ``audio`` from its final-layer output of each window (``[T_w, dim]``:
        1500 frames for a whole 30 s window, fewer where the encoder saw only the clip)."""
        import ctranslate2

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0 or float(np.max(np.abs(audio))) < SILENCE_PEAK:
            return ""  # as ASRBackend.transcribe: silence is not decoded
        if self.vad and not _has_speech(audio):
            self.no_speech_clips += 1
            return ""
        windows = [ctranslate2.StorageView.from_array(np.ascontiguousarray(out[None], dtype=np.float32))
                   for out in final]
        ctranslate2.set_random_seed(0)  # temperature fallback samples; as WhisperBackend, per clip
        text, extra = self.decoder.transcribe(windows, audio.size, lambda seek: self._encode_at(audio, seek))
        self.extra_passes += extra
        return text

    def _encode_at(self, audio: np.ndarray, seek: int):
        """The decoder model's own encoding of the 30 s from mel frame ``seek`` (transcript only)."""
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor

        chunk = audio[seek * HOP: seek * HOP + N_FRAMES * HOP]
        padded = np.pad(chunk, (0, N_FRAMES * HOP - chunk.size)).astype(np.float32)
        mel = FeatureExtractor(feature_size=self.model.n_mels)(padded, padding=0)[:, :N_FRAMES]
        return self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), to_cpu=True)


def _has_speech(audio: np.ndarray) -> bool:
    """Silero VAD (faster-whisper's, default options) finds any speech in the clip."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return bool(get_speech_timestamps(audio, VadOptions()))
