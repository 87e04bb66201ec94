"""Transcripts and speech features of a corpus from one Whisper pass per clip.

Why: a recipe whose recogniser is whisper-base and whose speech encoder is the packaged Whisper
base encoder ran that encoder twice per clip, once inside faster-whisper (``koemo transcribe``)
and once for the feature store (``koemo features extract``): 1.38 s + 0.82 s a clip on this
2-core machine, 1.16 s for the shared pass. With ``asr.shared_pass`` the transcripts are decoded
from the speech encoder's pass (:class:`SharedPassBackend`, what ``koemo predict`` does), so
:func:`fill` writes both from one pass. It only fills caches: the transcript cache under the
backend's own key, the feature store under the encoder's own id, exactly the entries the
ordinary paths (:func:`koemo.asr.transcribe.transcribe_manifest` given
:func:`recogniser_factory`'s factory, :meth:`koemo.encoders.store.FeatureStore.speech`) would
write, which then find them. It lives with the encoders because it needs one (the recognition
layer below cannot import it).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import numpy as np

from koemo.asr.base import ASRBackend
from koemo.data.manifest import Utterance
from koemo.encoders.base import ALL_LAYERS, DEFAULT_WINDOW, speech_settings

log = logging.getLogger("koemo")


class SharedPassBackend(ASRBackend):
    """``whisper-base`` as :class:`koemo.asr.shared_pass.SharedWhisper` decodes it over the default bundle's speech
    encoder (every layer, torch float32): the recogniser of a recipe with ``asr.shared_pass``, so
    training reads the transcripts the service produces. Its cache key says so (``shared_pass``),
    so these transcripts never mix with faster-whisper's. After each clip, :attr:`frames` holds
    that pass's speech features (what :class:`koemo.encoders.store.FeatureStore` stores for
    :attr:`encoder`): :func:`fill` keeps them."""

    name = "whisper-base"

    def __init__(self, cpu_threads: int | None = None, window: str = DEFAULT_WINDOW):
        from koemo.asr.shared_pass import SharedWhisper
        from koemo.encoders import get_speech_encoder

        settings = speech_settings({"speech_layer": ALL_LAYERS, "speech_window": window})
        self.encoder = get_speech_encoder("whisper-base-encoder", **settings)
        self.shared = SharedWhisper(self.encoder, cpu_threads=cpu_threads)
        self.frames: np.ndarray | None = None

    def params(self) -> dict:
        return self.shared.params()

    def _recognise(self, audio: np.ndarray) -> str:
        text, self.frames, _ = self.shared.joint(audio)
        return text


def recogniser_factory(recipe, backend: str):
    """What builds the recogniser of ``backend`` under ``recipe`` (one owner for ``koemo
    transcribe`` and ``koemo reproduce``): :class:`SharedPassBackend` over the window the
    recipe's speech encoder sees (``encoders.speech_window``) for whisper-base with
    ``asr.shared_pass``, else None (``make_backend`` by name). Picklable: worker processes and
    Ray actors build their own."""
    if not (getattr(recipe.asr, "shared_pass", False) and backend == "whisper-base"):
        return None
    window = getattr(recipe.encoders, "speech_window", DEFAULT_WINDOW)
    return SharedPassBackend if window == DEFAULT_WINDOW else partial(SharedPassBackend, window=window)


def gives_recipe_features(recipe) -> bool:
    """Whether the pass's frames are what ``recipe`` reads as speech features (every layer of
    whisper-base-encoder, over the recipe's window: :func:`recogniser_factory` builds the pass
    with it), so filling the store with them is work the recipe needs."""
    return recipe.encoders.speech == "whisper-base-encoder" and recipe.encoders.speech_layer == ALL_LAYERS


@dataclass
class FillReport:
    transcripts: int = 0  # transcripts written to the cache
    features: int = 0  # feature entries written to the store
    #: clips it could not use, kept quietly: the ordinary paths that follow report each one
    skipped: list = field(default_factory=list)


def fill(utts: Sequence[Utterance], store, *, cache=None, backend=None, factory=None,
         progress: bool = True) -> FillReport:
    """One shared pass (``backend``, or one ``factory()`` builds when there is work: a
    :class:`SharedPassBackend`, the default one when neither is given) for every utterance
    (clean audio) whose whisper-base transcript is not cached yet; its transcript goes to the
    cache and, where the store lacks them, its frames to ``store``. Clips already transcribed
    are left to the store (encoding alone is cheaper than a pass plus decoding). A clip that
    cannot be read is left out (the ordinary paths report it)."""
    from tqdm import tqdm

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
        backend = backend or (factory or SharedPassBackend)()
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
        store.flush()
        if own_cache:
            cache.close()
    if report.transcripts:
        log.info("one pass: %d transcripts, %d feature entries", report.transcripts, report.features)
    return report


__all__ = ["FillReport", "SharedPassBackend", "fill", "gives_recipe_features", "recogniser_factory"]
