"""``google``: Google Cloud Speech-to-Text (the recogniser the paper used), through its v1 REST API.

Optional: needs the ``cloud`` extra (httpx), internet and a credential, read from the environment:
``GOOGLE_API_KEY`` (an API key, sent as ``?key=``) or ``GOOGLE_ACCESS_TOKEN`` (an OAuth token,
sent as ``Authorization: Bearer``). ``KOEMO_GOOGLE_STT_URL`` points it at another endpoint
(the tests use a fake server on 127.0.0.1). Synchronous recognition accepts at most 60 s per
request, so longer clips are sent in 55 s pieces and the texts joined.

The service's model changes over time without a version we can see; cached transcripts are keyed
by the request settings only, so delete the cache entries to re-query.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import numpy as np

from koemo.asr.base import ASR_BACKENDS, ASRBackend
from koemo.data.audio import SAMPLE_RATE
from koemo.errors import KoemoError

DEFAULT_URL = "https://speech.googleapis.com/v1/speech:recognize"
PIECE_SECONDS = 55
TIMEOUT_S = 120.0


@ASR_BACKENDS.register("google")
class GoogleSTTBackend(ASRBackend):
    name = "google"

    def __init__(self, language: str = "ko-KR", model: str | None = None, url: str | None = None):
        try:
            import httpx
        except ModuleNotFoundError:
            raise KoemoError("backend 'google' needs httpx: pip install 'koemo[cloud]'") from None
        self.api_key = os.environ.get("GOOGLE_API_KEY", "").strip()
        self.token = os.environ.get("GOOGLE_ACCESS_TOKEN", "").strip()
        if not (self.api_key or self.token):
            raise KoemoError(
                "backend 'google' needs a credential: set GOOGLE_API_KEY (API key) or "
                "GOOGLE_ACCESS_TOKEN (e.g. from: gcloud auth print-access-token)"
            )
        self.url = url or os.environ.get("KOEMO_GOOGLE_STT_URL") or DEFAULT_URL
        self.language = language
        self.model = model
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.client = httpx.Client(timeout=TIMEOUT_S, headers=headers)

    def params(self) -> dict[str, Any]:
        return {"api": "v1", "config": self._config()}

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"encoding": "LINEAR16", "sampleRateHertz": SAMPLE_RATE, "languageCode": self.language}
        if self.model:
            config["model"] = self.model
        return config

    def _recognise(self, audio: np.ndarray) -> str:
        piece = PIECE_SECONDS * SAMPLE_RATE
        return " ".join(t for i in range(0, len(audio), piece) if (t := self._request(audio[i : i + piece])))

    def _request(self, audio: np.ndarray) -> str:
        import httpx

        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        body = {"config": self._config(), "audio": {"content": base64.b64encode(pcm).decode("ascii")}}
        query = {"key": self.api_key} if self.api_key and not self.token else None
        try:
            response = self.client.post(self.url, json=body, params=query)
        except httpx.HTTPError as e:
            raise KoemoError(f"Google Speech-to-Text at {self.url}: request failed ({e or type(e).__name__})") from None
        if response.status_code != 200:
            raise KoemoError(f"Google Speech-to-Text: HTTP {response.status_code}: {_error_message(response)}")
        try:
            results = response.json().get("results") or []
        except ValueError:
            raise KoemoError(f"Google Speech-to-Text at {self.url}: the answer is not JSON") from None
        # Each result is one consecutive stretch of the audio; its first alternative is the best.
        return " ".join(r["alternatives"][0].get("transcript", "").strip() for r in results if r.get("alternatives"))


def _error_message(response) -> str:
    try:
        error = response.json().get("error") or {}
        return f"{error.get('status', '')} {error.get('message', '')}".strip() or response.text[:200]
    except ValueError:
        return response.text[:200].replace("\n", " ") or response.reason_phrase
