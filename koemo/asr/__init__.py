"""Speech recognition: backends (registry ``ASR_BACKENDS``), noise, transcript cache, CER/WER/sWER.

Backend modules import their heavy libraries only when a backend is built, so importing this
package is cheap.
"""

from koemo.asr.base import ASR_BACKENDS, ASRBackend, backend_names, make_backend
from koemo.asr.noise import NOISE_KINDS, NoiseCondition, text_source

from koemo.asr import google, vosk, whisper  # noqa: E402,F401  (register the backends)

__all__ = ["ASR_BACKENDS", "ASRBackend", "NOISE_KINDS", "NoiseCondition", "backend_names", "make_backend", "text_source"]
