"""Transcripts and speech features of a corpus from one Whisper pass per clip.

Why: a recipe whose recogniser is whisper-base and whose speech encoder is the packaged Whisper
base encoder ran that encoder twice per clip, once inside faster-whisper (``koemo transcribe``)
and once for the feature store (``koemo features extract``): 1.38 s + 0.82 s a clip on this
2-core machine, 1.16 s for the shared pass. With ``asr.shared_pass`` the transcripts are decoded
from the speech encoder's pass (:class:`koemo.asr.shared_pass.SharedPassBackend`, what
``koemo predict`` does), so :func:`fill` writes both from one pass. It only fills caches: the
transcript cache under the backend's own key, the feature store under the encoder's own id,
exactly the entries the ordinary paths (:func:`koemo.asr.transcribe.transcribe_manifest`,
:meth:`koemo.encoders.store.FeatureStore.speech`) would write, which then find them.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Sequence

from koemo.data.manifest import Utterance

log = logging.getLogger("koemo")


def backend_options(asr_config, backend: str) -> dict:
    """The recogniser options a recipe's ``asr`` section sets for ``backend`` (one owner for both
    ``koemo transcribe`` and ``koemo reproduce``): ``shared_pass`` applies to whisper-base only."""
    return {"shared_pass": True} if getattr(asr_config, "shared_pass", False) and backend == "whisper-base" else {}


@dataclass
class FillReport:
    transcripts: int = 0  # transcripts written to the cache
    features: int = 0  # feature entries written to the store
    #: clips it could not use, kept quietly: the ordinary paths that follow report each one
    skipped: list = field(default_factory=list)


def fill(utts: Sequence[Utterance], store, *, cache=None, backend=None, progress: bool = True) -> FillReport:
    """One shared pass for every utterance (clean audio) whose whisper-base transcript is not
    cached yet; its transcript goes to the cache and, where the store lacks them, its frames to
    ``store``. Clips already transcribed are left to the store (encoding alone is cheaper than a
    pass plus decoding). A clip that cannot be read is left out (the ordinary paths report it)."""
    from tqdm import tqdm

    from koemo.asr.base import make_backend
    from koemo.asr.cache import TranscriptCache, noise_key
    from koemo.asr.transcribe import _attempt
    from koemo.errors import BadInputError

    report = FillReport()
    own_cache = cache is None
    cache = TranscriptCache() if own_cache else cache
    try:
        todo = []
        for u in utts:
            try:
                key = cache.audio_key(u)
            except BadInputError as e:
                report.skipped.append(e)
                continue
            todo.append((u, key))
        if not todo:
            return report
        backend = backend or make_backend("whisper-base", shared_pass=True)
        nkey = noise_key(None)
        todo = [(u, k) for u, k in todo if cache.get(k, backend.cache_key, nkey) is None]
        folder = store.encoder_dir("speech", backend.encoder)
        bar = tqdm(todo, desc="one pass: whisper-base + whisper-base-encoder", unit="clip", disable=not progress,
                   file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 30)
        for u, key in bar:
            backend.frames = None  # a silent clip is not decoded, so has no pass
            _, text, error = _attempt(backend, u, None)
            try:
                if error is not None:
                    raise error
                path = store.speech_path(folder, u)
                if backend.frames is not None and not path.is_file():
                    store.put(path, backend.frames, f"{u.id} ({u.audio})")
                    report.features += 1
            except BadInputError as e:
                report.skipped.append(e)
                continue
            cache.put(key, backend.cache_key, nkey, text)
            report.transcripts += 1
    finally:
        if own_cache:
            cache.close()
    if report.transcripts:
        log.info("one pass: %d transcripts, %d feature entries", report.transcripts, report.features)
    return report


__all__ = ["FillReport", "backend_options", "fill"]
