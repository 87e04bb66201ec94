"""The speech-recogniser interface every backend implements, and the registry that names them.

A backend turns 16 kHz mono float32 audio into text. Its :attr:`ASRBackend.cache_key` holds
everything that changes its output (backend name, decoding parameters, model checksum, library
version), so cached transcripts can never be reused across settings that would differ.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from koemo.data.audio import SILENCE_PEAK
from koemo.errors import KoemoError
from koemo.registry import Registry


class ASRBackend(ABC):
    """Audio in, text out. Subclasses load their model in ``__init__`` (once per process)."""

    #: registry name; for parameterised backends (``whisper:<dir>``) the full spec
    name: str = ""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Everything besides the audio that decides the output; JSON-serialisable."""

    @abstractmethod
    def _recognise(self, audio: np.ndarray) -> str:
        """Transcribe non-silent audio (16 kHz mono float32)."""

    def transcribe(self, audio: np.ndarray) -> str:
        """Text of ``audio``; a silent or empty clip gives "" without running the model."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0 or float(np.max(np.abs(audio))) < SILENCE_PEAK:
            return ""
        return " ".join(self._recognise(audio).split())

    @property
    def cache_key(self) -> str:
        """Stable identity of (backend, settings): the transcript cache's backend key."""
        return json.dumps({"backend": self.name, **self.params()}, sort_keys=True, ensure_ascii=False)


ASR_BACKENDS: Registry[type[ASRBackend]] = Registry("ASR backend", ASRBackend)

#: ``whisper:<dir-or-hub-name>`` picks any Whisper model in CTranslate2 format
WHISPER_PREFIX = "whisper:"


def make_backend(name: str, **options: Any) -> ASRBackend:
    """Build a backend from its name: a registry key, or ``whisper:<dir-or-hub-name>``."""
    if name.startswith(WHISPER_PREFIX):
        model = name[len(WHISPER_PREFIX):]
        if not model:
            raise KoemoError("backend 'whisper:' needs a model directory or hub name, e.g. whisper:/models/whisper-small")
        return ASR_BACKENDS.get("whisper")(model, **options)
    if name == "whisper":
        raise KoemoError("backend 'whisper' needs a model: whisper:<directory-or-hub-name>")
    return ASR_BACKENDS.get(name)(**options)


def backend_names() -> list[str]:
    return [n for n in ASR_BACKENDS.names() if n != "whisper"] + ["whisper:<dir-or-name>"]
