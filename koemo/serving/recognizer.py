"""The library face of koemo: :class:`Recognizer` loads a model bundle once and predicts the
emotion of files, arrays and batches, returning typed :class:`Result` objects.

It wraps the same :class:`~koemo.serving.predictor.Predictor` that ``koemo predict`` and
``koemo serve`` use, so a result here is the result there. Example (``bundle`` is a model
directory, ``clip`` a recording; ``"default"`` is the model ``make demo`` trains)::

    >>> import koemo
    >>> rec = koemo.Recognizer.from_pretrained(bundle)
    >>> result = rec.predict_file(clip)
    >>> result.label in rec.labels, round(sum(result.probabilities.values()), 6)
    (True, 1.0)
    >>> result.label == max(result.probabilities, key=result.probabilities.get)
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from koemo.errors import BadInputError, KoemoError
from koemo.paths import NAMED_MODELS, named_bundle_dir
from koemo.serving.limits import Limits
from koemo.serving.sessions import BATCH_NORMALISE_MODES, Session

PathLike = Union[str, Path]


#: Names :meth:`Recognizer.from_pretrained` knows, each -> where its bundle lives
#: (:data:`koemo.paths.NAMED_MODELS` owns the names and says how each is trained)
PRETRAINED: dict[str, Callable[[], Path]] = {name: partial(named_bundle_dir, name) for name in NAMED_MODELS}


@dataclass(frozen=True)
class Contribution:
    """Shares of one decision owed to the speech and the text encoder (Grad-CAM, sum 1)."""

    audio: float
    text: float


@dataclass(frozen=True)
class Utterance:
    """One utterance of a recording (the whole recording when it was not cut by VAD)."""

    start: float
    end: float
    transcript: str
    label: str
    probabilities: Mapping[str, float]
    contribution: Optional[Contribution] = None


@dataclass(frozen=True)
class Result:
    """The emotion of one recording: the duration-weighted mean of its utterances'."""

    file: str
    label: str
    probabilities: Mapping[str, float]
    transcript: str
    segments: tuple[Utterance, ...]
    contribution: Optional[Contribution]
    duration: float
    timings: Mapping[str, float]
    warnings: tuple[str, ...] = ()  # e.g. an utterance too short to judge

    @classmethod
    def from_dict(cls, file: str, d: Mapping[str, Any]) -> "Result":
        """From the dict :meth:`Predictor.predict` returns (the service's JSON body)."""
        def contrib(c):
            return Contribution(float(c["audio"]), float(c["text"])) if c else None

        segments = tuple(
            Utterance(float(s["start"]), float(s["end"]), s["transcript"], s["label"],
                      dict(s["probabilities"]), contrib(s.get("contribution")))
            for s in d["segments"]
        )
        return cls(file, d["label"], dict(d["probabilities"]), d["transcript"], segments,
                   contrib(d.get("contribution")), float(d["duration"]), dict(d["timings"]),
                   tuple(d.get("warnings") or ()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the same fields as a ``POST /v1/predict`` answer."""
        d = asdict(self)
        d["segments"] = list(d["segments"])
        d["warnings"] = list(d["warnings"])
        return d


class Recognizer:
    """Speech emotion recognition for Python programs.

    Build it with :meth:`from_pretrained`; it holds the ASR, both encoders and the fusion head,
    loaded once, and is safe to call from several threads.
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_pretrained(cls, name_or_path: PathLike = "default", *, asr: str | None = None,
                        runtime: str = "torch", segment_over: float = 15.0,
                        shared_pass: bool = True, trim_margin: float | None = None) -> "Recognizer":
        """Load a model bundle: a name from :data:`PRETRAINED` (``"default"``: the one ``make
        demo`` trains, ``$KOEMO_CACHE/bundles/default``; ``"fast"``: the clip-window recipe's,
        ``emotiontts-fast``) or a bundle directory (a ``Path`` is always a directory).

        ``asr``: the speech recogniser (default: the one the bundle was trained for);
        ``runtime``: ``torch``, ``onnx`` or ``onnx-int8`` (the fusion head on onnxruntime, no
        contribution); ``segment_over``: recordings longer than this (seconds) are cut into
        utterances by voice activity; ``shared_pass``: decode the transcript from the speech
        encoder's Whisper pass where the model allows (one encoder pass per clip);
        ``trim_margin``: a shorter recording is cut to its speech plus this margin (seconds;
        negative: kept whole; None: the margin the bundle's training clips were cut with,
        ``encoders.trim_margin``, else 0.25).
        """
        from koemo.serving.loader import load_predictor

        key = str(name_or_path)
        if isinstance(name_or_path, str) and key in PRETRAINED:
            model: Optional[PathLike] = key  # the loader finds it, or says how to train it
        else:
            model = Path(name_or_path).expanduser()
            if isinstance(name_or_path, str) and not model.exists() and "/" not in key and "\\" not in key \
                    and not key.startswith("."):
                raise KoemoError(f"{key}: neither a model bundle directory nor a known model "
                                 f"({', '.join(sorted(PRETRAINED))})")
        limits = Limits(max_duration_s=0, segment_over_s=segment_over)
        predictor = load_predictor(model, asr=asr, limits=limits, runtime=runtime, shared_pass=shared_pass,
                                   trim_margin=trim_margin)
        return cls(predictor)

    @property
    def labels(self) -> tuple[str, ...]:
        """The emotions this model predicts, in the order of its outputs."""
        return tuple(self.predictor.labels)

    def describe(self) -> dict[str, Any]:
        """Labels, encoders, ASR and versions (``GET /v1/model``)."""
        return self.predictor.describe()

    def predict(self, audio, sample_rate: int, *, name: str = "<array>", session: Session | None = None,
                normalise: str | None = None) -> Result:
        """The emotion of samples ``audio`` (1-D, or ``[samples, channels]``; float or integer PCM)
        recorded at ``sample_rate`` Hz; resampled to 16 kHz.

        ``session`` (:meth:`session`): recordings of one speaker share one, so each is normalised
        by that voice's statistics so far; ``normalise``: ``speaker``, ``file`` or ``none``
        (see ``docs/serving.md``).
        """
        from koemo.data.audio import audio_from_array

        samples = audio_from_array(audio, sample_rate, name=name)
        return self._predict(samples, name, session, normalise)

    def predict_file(self, path: PathLike, *, session: Session | None = None, normalise: str | None = None) -> Result:
        """The emotion of the recording at ``path`` (WAV, FLAC, MP3, M4A, OGG/Opus, WebM...)."""
        return self._predict(read_file(path), str(path), session, normalise)

    def predict_batch(self, paths: Iterable[PathLike], *, normalise: str = "speaker",
                      errors: str = "raise") -> list[Result]:
        """The emotion of each file, in order; ``normalise="speaker"`` treats the files as one
        speaker (their voice statistics normalise each one), as ``koemo predict`` does.

        ``errors="skip"`` leaves out files that are not usable audio instead of raising.
        """
        return [r for _path, r in self.iter_batch(paths, normalise=normalise, errors=errors)
                if isinstance(r, Result)]

    def iter_batch(self, paths: Iterable[PathLike], *, normalise: str = "speaker", errors: str = "raise",
                   progress: bool = False) -> Iterator[tuple[str, Union[Result, BadInputError]]]:
        """``(path, Result)`` per file as each is done; with ``errors="skip"`` a bad file yields
        ``(path, BadInputError)`` and the batch goes on. The loop ``koemo predict`` runs.

        ``normalise``: as :meth:`predict`, where ``speaker`` takes every file of the batch as one
        speaker; ``folder`` takes the files of each directory as one (a corpus laid out one speaker
        to a folder; never one emotion to a folder, whose emotion the normalisation would remove).
        Those two read every file before the first result; ``progress`` shows that pass (tqdm)."""
        if errors not in ("raise", "skip"):
            raise KoemoError(f"errors={errors!r}: use 'raise' or 'skip'")
        if normalise not in BATCH_NORMALISE_MODES:
            raise KoemoError(f"normalise={normalise!r}: use one of {', '.join(BATCH_NORMALISE_MODES)}")
        files = [str(p) for p in paths]
        failed: dict[str, BadInputError] = {}
        sessions: dict[str, Session] = {}
        encoded: dict[str, Any] = {}
        group_of = (lambda path: str(Path(path).parent)) if normalise == "folder" else (lambda path: "")
        stage = self.predictor.speech_stage
        if normalise in ("speaker", "folder") and stage.normaliser is not None:
            # first pass: every file's voice statistics, so each file is normalised by its group's.
            # A head reading clip statistics keeps each file's encoding (small) and classifies it
            # in the second pass: one Whisper pass per file. A head reading frames would keep every
            # file's frames, so its files are encoded again instead.
            keep = stage.compact
            for path in _progress(files, progress, "statistics" if not keep else "encoding"):
                session = sessions.setdefault(group_of(path), Session())
                try:
                    if keep:
                        encoded[path] = self.predictor.encode(read_file(path), name=path)
                        session.add(encoded[path].moments)
                    else:
                        self.predictor.observe(read_file(path), session, name=path)
                except BadInputError as e:
                    if errors == "raise":
                        raise
                    failed[path] = e
        for path in files:
            if path in failed:
                yield path, failed[path]
                continue
            mode = "speaker" if normalise == "folder" else normalise
            try:
                if path in encoded:
                    result = self.predictor.finish(encoded.pop(path), session=sessions.get(group_of(path)),
                                                   normalise=mode, update_session=False)
                else:
                    result = self.predictor.predict(read_file(path), name=path, session=sessions.get(group_of(path)),
                                                    normalise=mode, update_session=False)
            except BadInputError as e:
                if errors == "raise":
                    raise
                yield path, e
                continue
            yield path, Result.from_dict(path, result)

    def session(self) -> Session:
        """A new speaker/call session for :meth:`predict` and :meth:`predict_file`."""
        return Session()

    def _predict(self, samples: np.ndarray, name: str, session: Session | None, normalise: str | None) -> Result:
        return Result.from_dict(name, self.predictor.predict(samples, name=name, session=session, normalise=normalise))


def _progress(files: list[str], show: bool, what: str):
    if not show or len(files) < 2:
        return files
    from tqdm import tqdm

    return tqdm(files, desc=what, unit="file", leave=False)


def read_file(path: PathLike) -> np.ndarray:
    """A recording as 16 kHz mono float32, refusing a WAV cut short of what its header declares."""
    from koemo.data.audio import load_audio
    from koemo.serving.limits import check_wav_complete

    p = Path(path)
    if p.suffix.lower() == ".wav" and p.is_file():
        with open(p, "rb") as f:
            check_wav_complete(f.read(), str(p))
    return load_audio(p)
