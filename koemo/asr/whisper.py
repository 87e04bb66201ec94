"""Whisper through faster-whisper (CTranslate2): the packaged ``whisper-base`` and any other model.

Decoding is greedy (beam 1), int8 on CPU, Korean forced. Under heavy noise Whisper hallucinates
(repeated phrases, text in silence), so by default the faster-whisper guards are on: Silero VAD
drops non-speech, segments with a high no-speech probability and low log-probability are dropped,
and segments whose compression ratio shows repetition are re-decoded at a higher temperature.
``condition_on_previous_text`` is off so one hallucinated window cannot seed the next.
``whisper-base-noguards`` turns all of that off; it exists to measure what the guards change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from koemo.asr.base import ASR_BACKENDS, WHISPER_PREFIX, ASRBackend
from koemo.errors import KoemoError
from koemo.paths import sha256_file
from koemo.threads import torch_threads_kept

# faster-whisper's own defaults for the thresholds, which it applies only when asked to.
GUARDS = {
    "vad_filter": True,
    "no_speech_threshold": 0.6,
    "log_prob_threshold": -1.0,
    "compression_ratio_threshold": 2.4,
    "temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    "condition_on_previous_text": False,
}
NO_GUARDS = {
    "vad_filter": False,
    "no_speech_threshold": None,
    "log_prob_threshold": None,
    "compression_ratio_threshold": None,
    "temperature": [0.0],
    "condition_on_previous_text": True,
}


def _installed_fingerprint(model_dir: Path) -> str | None:
    """The checksums ``koemo models install`` recorded, if this is an installed model."""
    record = model_dir / "koemo-install.json"
    if record.is_file():
        sums = json.loads(record.read_text(encoding="utf-8")).get("sha256") or {}
        if sums.get("model.bin"):
            return sums["model.bin"]
    return None


def _model_fingerprint(model_dir: Path) -> str:
    return _installed_fingerprint(model_dir) or sha256_file(model_dir / "model.bin")


def _resolve_model(model: str) -> Path:
    """A local CTranslate2 Whisper directory, or a hub name fetched by faster-whisper (needs internet)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise KoemoError(f"{path}: not a CTranslate2 Whisper model directory (no model.bin)")
        return path
    if path.exists():
        raise KoemoError(f"{path}: not a directory (a Whisper model is a directory holding model.bin)")
    if model.startswith((".", "~", "/")):
        raise KoemoError(f"{model}: model directory not found")
    try:
        from faster_whisper.utils import download_model

        return Path(download_model(model))
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KoemoError(f"whisper model '{model}': not a local directory and not downloadable ({first})") from None


class WhisperBackend(ASRBackend):
    """Any Whisper model in CTranslate2 format, by directory or hub name."""

    language = "ko"
    compute_type = "int8"
    cpu_threads = 2
    beam_size = 1

    def __init__(self, model: str | Path, guards: bool = True, cpu_threads: int | None = None):
        import logging

        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per clip otherwise
        self.model_dir = _resolve_model(str(model))
        self.name = self.name or f"{WHISPER_PREFIX}{model}"
        self.guards = guards
        if cpu_threads is not None:
            self.cpu_threads = cpu_threads
        self.fingerprint = _model_fingerprint(self.model_dir)
        with torch_threads_kept():  # CTranslate2 sets the process's OpenMP thread count
            self.model = WhisperModel(
                str(self.model_dir), device="cpu", compute_type=self.compute_type, cpu_threads=self.cpu_threads
            )

    def decode_options(self) -> dict[str, Any]:
        return {"language": self.language, "beam_size": self.beam_size, **(GUARDS if self.guards else NO_GUARDS)}

    def params(self) -> dict[str, Any]:
        import faster_whisper

        return {
            "model_sha256": self.fingerprint,
            "compute_type": self.compute_type,
            "faster_whisper": faster_whisper.__version__,
            **self.decode_options(),
        }

    def _recognise(self, audio: np.ndarray) -> str:
        import ctranslate2

        # Temperature fallback samples; a fixed seed keeps the transcript reproducible.
        ctranslate2.set_random_seed(0)
        segments, _info = self.model.transcribe(audio, **self.decode_options())
        # faster-whisper slides a 30 s window over long audio itself: nothing is truncated.
        return " ".join(s.text.strip() for s in segments)


ASR_BACKENDS.register("whisper")(WhisperBackend)


@ASR_BACKENDS.register("whisper-base")
class WhisperBaseBackend(WhisperBackend):
    """OpenAI Whisper base (multilingual, MIT) installed by ``koemo models install whisper-base``."""

    name = "whisper-base"

    def __init__(self, guards: bool = True, cpu_threads: int | None = None):
        from koemo.models import installed_path

        super().__init__(installed_path("whisper-base"), guards=guards, cpu_threads=cpu_threads)


@ASR_BACKENDS.register("whisper-base-noguards")
class WhisperBaseNoGuardsBackend(WhisperBaseBackend):
    """whisper-base with VAD, thresholds and temperature fallback off: for measuring the guards."""

    name = "whisper-base-noguards"

    def __init__(self, cpu_threads: int | None = None):
        super().__init__(guards=False, cpu_threads=cpu_threads)
