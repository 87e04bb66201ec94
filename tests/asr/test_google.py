"""The Google Speech-to-Text adapter against a fake v1 ``speech:recognize`` server on 127.0.0.1."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from koemo.asr import make_backend
from koemo.errors import KoemoError

pytest.importorskip("httpx")


class FakeSpeechAPI(BaseHTTPRequestHandler):
    """Answers like Google: checks the key, decodes the audio, returns one result per request."""

    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = parse_qs(url.query).get("key", [None])[0]
        bearer = self.headers.get("Authorization")
        self.requests.append({"path": url.path, "key": key, "bearer": bearer, "body": body})
        if url.path != "/v1/speech:recognize":
            return self._send(404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "no such method"}})
        if key != "good-key" and bearer != "Bearer good-token":
            return self._send(403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "API key not valid."}})
        samples = len(base64.b64decode(body["audio"]["content"])) // 2
        n = len(self.requests)
        self._send(200, {"results": [{"alternatives": [{"transcript": f" 안녕하세요 {n}", "confidence": 0.9}],
                                      "languageCode": "ko-kr"}], "samples": samples})

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_google(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSpeechAPI)
    FakeSpeechAPI.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/speech:recognize"
    monkeypatch.setenv("KOEMO_GOOGLE_STT_URL", url)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_ACCESS_TOKEN", raising=False)
    yield url, FakeSpeechAPI.requests
    server.shutdown()
    server.server_close()


def speech(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(np.arange(int(seconds * 16000)) / 8)).astype(np.float32)


def test_sends_linear16_korean_and_reads_the_transcript(fake_google, monkeypatch):
    _, requests = fake_google
    monkeypatch.setenv("GOOGLE_API_KEY", "good-key")
    assert make_backend("google").transcribe(speech(2.0)) == "안녕하세요 1"
    (request,) = requests
    assert request["key"] == "good-key"
    assert request["body"]["config"] == {"encoding": "LINEAR16", "sampleRateHertz": 16000, "languageCode": "ko-KR"}
    assert len(base64.b64decode(request["body"]["audio"]["content"])) == 2 * 32000


def test_oauth_token_goes_in_the_header(fake_google, monkeypatch):
    _, requests = fake_google
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", "good-token")
    assert make_backend("google").transcribe(speech(1.0)) == "안녕하세요 1"
    assert requests[0]["bearer"] == "Bearer good-token" and requests[0]["key"] is None


def test_audio_over_a_minute_is_sent_in_pieces(fake_google, monkeypatch):
    _, requests = fake_google
    monkeypatch.setenv("GOOGLE_API_KEY", "good-key")
    assert make_backend("google").transcribe(speech(70.0)) == "안녕하세요 1 안녕하세요 2"
    sizes = [len(base64.b64decode(r["body"]["audio"]["content"])) // 2 for r in requests]
    assert sizes == [55 * 16000, 15 * 16000]


def test_no_credentials_is_a_clear_error(fake_google):
    with pytest.raises(KoemoError, match="backend 'google' needs a credential: set GOOGLE_API_KEY"):
        make_backend("google")


def test_rejected_key_reports_googles_message(fake_google, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "wrong-key")
    with pytest.raises(KoemoError, match=r"^Google Speech-to-Text: HTTP 403: PERMISSION_DENIED API key not valid\.$"):
        make_backend("google").transcribe(speech(1.0))


def test_unreachable_endpoint_is_one_line(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GOOGLE_API_KEY", "good-key")
    monkeypatch.setenv("KOEMO_GOOGLE_STT_URL", f"http://127.0.0.1:{port}/v1/speech:recognize")
    with pytest.raises(KoemoError, match=rf"^Google Speech-to-Text at http://127\.0\.0\.1:{port}/v1/speech:recognize: request failed \(.+\)$"):
        make_backend("google").transcribe(speech(1.0))


def test_silence_is_not_sent(fake_google, monkeypatch):
    _, requests = fake_google
    monkeypatch.setenv("GOOGLE_API_KEY", "good-key")
    assert make_backend("google").transcribe(np.zeros(16000, dtype=np.float32)) == ""
    assert requests == []
