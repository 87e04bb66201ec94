"""Transcribe a manifest with one recogniser under one noise condition, through the cache.

The result is a manifest column named by :func:`koemo.asr.noise.text_source`. Every transcript
goes into the SQLite cache the moment it exists, so an interrupted run resumes and a re-run is
instant; the manifest is rewritten (atomically, under a lock) only at the end. A clip that cannot
be read is skipped with a one-line message and counted, never fatal.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from koemo.asr.base import ASRBackend, make_backend
from koemo.asr.cache import TranscriptCache, noise_key
from koemo.asr.noise import NoiseCondition, NoiseMaker, noise_condition, text_source
from koemo.data.audio import load_audio
from koemo.data.manifest import Utterance, read_manifest, write_manifest
from koemo.errors import BadInputError, SkipLog

log = logging.getLogger("koemo")


@dataclass
class TranscribeReport:
    source: str
    texts: dict[str, str] = field(default_factory=dict)  # utterance id -> transcript
    cached: int = 0
    computed: int = 0
    skips: SkipLog = field(default_factory=SkipLog)
    manifest: Path | None = None

    def summary(self) -> str:
        return (
            f"{self.source}: {len(self.texts)} transcripts ({self.computed} new, {self.cached} from cache), "
            f"{len(self.skips)} skipped"
        )


def transcribe_one(backend: ASRBackend, utt: Utterance, noise: NoiseMaker | None = None) -> str:
    """Load one utterance (any format/rate -> 16 kHz), add noise if asked, recognise it."""
    audio = load_audio(utt.audio, start=utt.start, end=utt.end, allow_silent=True, name=f"{utt.id} ({utt.audio})")
    if noise is not None:
        audio = noise.apply(utt, audio)
    return backend.transcribe(audio)


def _attempt(backend: ASRBackend, utt: Utterance, noise: NoiseMaker | None) -> tuple[str, str | None, BadInputError | None]:
    try:
        return utt.id, transcribe_one(backend, utt, noise), None
    except BadInputError as e:
        return utt.id, None, e
    except (RuntimeError, ValueError, MemoryError) as e:  # a recogniser choking on one clip
        return utt.id, None, BadInputError(utt.id, f"recogniser failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})")


# --- worker processes: each builds its own backend once -------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(build: Callable[[], ASRBackend], condition: NoiseCondition | None, pool: list[Utterance]) -> None:
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    _WORKER["backend"] = build()
    _WORKER["noise"] = NoiseMaker(condition, pool) if condition else None


def _worker_run(utt: Utterance) -> tuple[str, str | None, BadInputError | None]:
    return _attempt(_WORKER["backend"], utt, _WORKER["noise"])


def _actor_backend(build: Callable[[], ASRBackend], condition: NoiseCondition | None,
                   pool: list[Utterance]) -> tuple[ASRBackend, NoiseMaker | None]:
    """A Ray actor's state (:func:`koemo.distributed.map_actors`): the backend, built once."""
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    return build(), (NoiseMaker(condition, pool) if condition else None)


def _actor_run(state: tuple[ASRBackend, NoiseMaker | None], utt: Utterance) -> tuple[str, str | None, BadInputError | None]:
    return _attempt(state[0], utt, state[1])


def transcribe_utterances(
    utts: Sequence[Utterance],
    backend: str,
    noise: str | None = None,
    snr: float | None = None,
    seed: int = 0,
    jobs: int = 1,
    cache: TranscriptCache | None = None,
    progress: bool = True,
    only: set[str] | None = None,
    factory: Callable[[], ASRBackend] | None = None,
) -> TranscribeReport:
    """Transcripts for ``utts`` (from the cache where present), keyed by utterance id.

    ``only`` restricts the work to those ids while all of ``utts`` still form the babble pool, so
    a subset's transcripts are the very ones (same cache entries) a full run produces.
    ``factory`` (picklable, for worker processes and Ray actors) builds the recogniser instead
    of ``make_backend(backend)``: a layer above supplies one that needs its
    parts (``koemo.encoders.one_pass.SharedPassBackend``); ``backend`` still names the column.
    """
    from tqdm import tqdm

    build = factory or partial(make_backend, backend)
    condition = noise_condition(noise, snr, seed)
    report = TranscribeReport(source=text_source(backend, noise, snr, seed))
    recogniser = build()  # fails fast: unknown name, model not installed
    own_cache = cache is None
    cache = TranscriptCache() if cache is None else cache
    try:
        audio_keys: dict[str, str] = {}
        for utt in utts:
            try:
                audio_keys[utt.id] = cache.audio_key(utt)
            except BadInputError as e:
                report.skips.skip(e)
        usable = [u for u in utts if u.id in audio_keys]
        pool_keys = sorted(f"{u.id}:{audio_keys[u.id]}" for u in usable)
        nkey = noise_key(condition, pool_keys)
        pending = []
        for utt in usable if only is None else [u for u in usable if u.id in only]:
            hit = cache.get(audio_keys[utt.id], recogniser.cache_key, nkey)
            if hit is None:
                pending.append(utt)
            else:
                report.texts[utt.id] = hit
                report.cached += 1

        bar = tqdm(
            total=len(pending) + report.cached, initial=report.cached, desc=report.source, unit="clip",
            disable=not progress, file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 30,
        )
        with bar, _results(recogniser, build, condition, usable, pending, jobs) as results:
            for utt_id, text, error in results:
                if error is not None:
                    report.skips.skip(error)
                else:
                    cache.put(audio_keys[utt_id], recogniser.cache_key, nkey, text)
                    report.texts[utt_id] = text
                    report.computed += 1
                bar.update(1)
    finally:
        if own_cache:
            cache.close()
    return report


@contextmanager
def _results(recogniser, build, condition, pool, pending, jobs) -> Iterator:
    """(id, text, error) per pending utterance, in this process, in ``jobs`` worker processes, or
    on Ray actors (inside :func:`koemo.distributed.engine`: ``--ray``), each building the backend once."""
    from koemo import distributed

    if distributed.active() and pending:
        factory = partial(_actor_backend, build, condition, list(pool))
        results = distributed.map_actors(factory, pending, _actor_run, plugins=distributed.plugin_modules(recogniser))
        try:
            yield (result for _, result in results)
        finally:
            results.close()  # stops the actors when the caller leaves early
        return
    if jobs <= 1 or len(pending) <= 1:
        maker = NoiseMaker(condition, pool) if condition else None
        yield (_attempt(recogniser, u, maker) for u in pending)
        return
    # spawn, not fork: the parent already holds a multi-threaded model runtime.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=_worker_init, initargs=(build, condition, list(pool))) as workers:
        try:
            yield workers.imap_unordered(_worker_run, pending, chunksize=1)
        finally:
            workers.terminate()


@contextmanager
def _manifest_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of a manifest between concurrent ``koemo transcribe`` runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def evenly_spaced(utts: Sequence[Utterance], n: int) -> set[str]:
    """Ids of ``n`` utterances spread evenly over the manifest order (so every speaker and emotion
    of a sorted manifest is represented), for a quick look at an expensive condition."""
    if n <= 0:
        raise ValueError("the sample size must be positive")
    if n >= len(utts):
        return {u.id for u in utts}
    return {utts[(i * len(utts)) // n].id for i in range(n)}


def store_transcripts(manifest: Path, source: str, texts: dict[str, str],
                      scope: set[str] | None = None) -> list[Utterance]:
    """Put ``texts`` into the manifest's ``source`` column, keeping columns other runs wrote.

    Utterances in ``scope`` (default: all) without a text lose their old transcript in that column.
    """
    with _manifest_lock(manifest):
        utts = read_manifest(manifest)
        for u in utts:
            if u.id in texts:
                u.transcripts[source] = texts[u.id]
            elif scope is None or u.id in scope:
                u.transcripts.pop(source, None)  # skipped now: an old transcript would be stale
        write_manifest(manifest, utts)
    return utts


def transcribe_manifest(
    manifest: Path,
    backend: str,
    noise: str | None = None,
    snr: float | None = None,
    seed: int = 0,
    jobs: int = 1,
    progress: bool = True,
    sample: int | None = None,
    factory: Callable[[], ASRBackend] | None = None,
) -> TranscribeReport:
    """Transcribe every utterance of ``manifest`` (or an evenly spaced ``sample`` of them; all stay
    in the babble pool) and write the column back into it."""
    utts = read_manifest(manifest)
    only = evenly_spaced(utts, sample) if sample else None
    report = transcribe_utterances(utts, backend, noise, snr, seed, jobs,
                                   progress=progress, only=only, factory=factory)
    store_transcripts(manifest, report.source, report.texts, scope=only)
    report.manifest = manifest
    return report
