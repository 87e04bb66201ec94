"""Service security without the models: API keys (401/403), the rate limit (429), request ids,
CORS, what the log may hold, uploads kept off the disk, the CLI's defaults."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from typer.testing import CliRunner

from koemo.errors import KoemoError
from koemo.serving.app import create_app
from koemo.serving.security import (
    KeyStore,
    RateLimiter,
    Security,
    add_key,
    hash_key,
    is_loopback,
    request_id,
)
from tests.conftest import tone
from tests.serving.conftest import _FixedWords, fake_predictor, wav_bytes
from tests.serving.test_browser import browser  # noqa: F401 - the headless Chromium fixture

WAV = wav_bytes(tone(1.0))


class Clock:
    """A clock the test moves by hand, so rate-limit tests never depend on timing."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys"
    return path, add_key(path, "alice"), add_key(path, "bob")


def make_client(security: Security | None = None, ws: bool = False) -> TestClient:
    app = create_app(fake_predictor(), security=security)
    if ws:
        @app.websocket("/v1/echo-ws")
        async def echo(websocket: WebSocket):
            await websocket.accept()
            await websocket.send_text("hello")
            await websocket.close()
    return TestClient(app)


def keyed(keys, **kw) -> TestClient:
    return make_client(Security(keys=KeyStore.load(keys[0]), **kw))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predict(client: TestClient, headers: dict | None = None, data: bytes = WAV):
    return client.post("/v1/predict", files={"file": ("a.wav", data, "audio/wav")}, headers=headers or {})


# ---- the key file ----------------------------------------------------------------------------
def test_key_file_holds_only_hashes_and_is_private(keys):
    path, alice, bob = keys
    text = path.read_text()
    assert alice not in text and bob not in text
    assert text.splitlines() == [f"alice:sha256:{hashlib.sha256(alice.encode()).hexdigest()}",
                                 f"bob:sha256:{hashlib.sha256(bob.encode()).hexdigest()}"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(alice) >= 43 and alice != bob
    store = KeyStore.load(path)
    assert store.names() == ["alice", "bob"]
    assert store.identify(alice) == "alice" and store.identify(bob) == "bob"
    # the stored hash is not itself a key, nor is a near miss
    assert store.identify(hash_key(alice)) is None
    assert store.identify(alice[:-1]) is None and store.identify("") is None


def test_key_file_comments_blank_lines_and_duplicate_names(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# service keys\n\n  ci:sha256:{hash_key('k1')}  \n")
    assert KeyStore.load(path).identify("k1") == "ci"
    with pytest.raises(KoemoError, match="exists already"):
        add_key(path, "ci")
    with pytest.raises(KoemoError, match="key name"):
        add_key(path, "bad name")


@pytest.mark.parametrize("line,words", [
    ("alice", "expected NAME:sha256:HEX"),
    (f"alice:md5:{'0' * 64}", "expected NAME:sha256:HEX"),
    ("alice:sha256:abc", "64 lowercase hex digits"),
    (f"al ice:sha256:{'0' * 64}", "1-64 letters"),
    (f"bob:sha256:{'0' * 64}", "appears twice"),
    (f"carol:sha256:{'1' * 64}", "same hash"),
], ids=["no-colons", "other-hash", "short-hash", "bad-name", "twice", "same-hash"])
def test_bad_key_file_line_is_one_line_naming_file_and_line(tmp_path, line, words):
    path = tmp_path / "keys"
    path.write_text(f"# keys\nbob:sha256:{'0' * 64}\ndan:sha256:{'1' * 64}\n{line}\n")
    with pytest.raises(KoemoError) as e:
        KeyStore.load(path)
    assert str(e.value).startswith(f"{path}:4: ") and words in str(e.value) and "\n" not in str(e.value)


def test_missing_or_empty_key_file(tmp_path):
    with pytest.raises(KoemoError, match="cannot read the API key file"):
        KeyStore.load(tmp_path / "nope")
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(KoemoError, match="holds no keys"):
        KeyStore.load(tmp_path / "empty")


def test_keys_cli_add_and_list(tmp_path):
    from koemo.cli import app

    path = tmp_path / "keys"
    r = CliRunner().invoke(app, ["keys", "add", str(path), "web"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    assert KeyStore.load(path).identify(key) == "web" and key not in path.read_text()
    r = CliRunner().invoke(app, ["keys", "list", str(path)])
    assert r.exit_code == 0 and r.stdout.split() == ["web"]


# ---- 401 / 403 -------------------------------------------------------------------------------
def test_without_keys_the_service_stays_open():
    client = make_client()
    assert client.get("/v1/model").status_code == 200
    assert predict(client).status_code == 200


@pytest.mark.parametrize("path", ["/v1/model", "/v1/predict", "/v1/nonexistent"])
def test_no_key_is_401_and_a_wrong_key_403(keys, path):
    client = keyed(keys)
    call = (lambda h: predict(client, h)) if path == "/v1/predict" else (lambda h: client.get(path, headers=h))
    for headers in ({}, {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer "}):
        r = call(headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        body = r.json()
        assert body["status"] == 401 and body["error"] == f"{body['file']}: {body['problem']}"
        assert "API key" in body["problem"]
    for headers in (bearer("not-a-key"), {"X-API-Key": "not-a-key"}, bearer(hash_key(keys[1]))):
        r = call(headers)
        assert r.status_code == 403, (headers, r.text)
        assert "WWW-Authenticate" not in r.headers
        assert r.json()["status"] == 403 and r.json()["problem"] == "API key not recognised"


def test_either_header_carries_a_good_key(keys):
    client = keyed(keys)
    _, alice, bob = keys
    assert client.get("/v1/model", headers=bearer(alice)).status_code == 200
    assert client.get("/v1/model", headers={"authorization": f"bearer {bob}"}).status_code == 200
    assert client.get("/v1/model", headers={"X-API-Key": bob}).status_code == 200
    r = predict(client, bearer(alice))
    assert r.status_code == 200 and r.json()["label"] == "angry"


def test_health_page_and_docs_need_no_key(keys):
    client = keyed(keys)
    for path in ("/v1/health", "/", "/static/app.js", "/docs", "/openapi.json"):
        r = client.get(path)
        assert r.status_code == 200, path
    assert 'id="api-key"' in client.get("/").text


def test_websocket_needs_a_key(keys):
    client = make_client(Security(keys=KeyStore.load(keys[0])), ws=True)
    for headers in ({}, bearer("wrong")):
        with pytest.raises(WebSocketDisconnect) as e, client.websocket_connect("/v1/echo-ws", headers=headers):
            pass
        assert e.value.code == 1008 and "API key" in e.value.reason
    with client.websocket_connect("/v1/echo-ws", headers=bearer(keys[1])) as ws:
        assert ws.receive_text() == "hello"
    # a browser's way: the key as a subprotocol (koemo.key.KEY); a wrong one is refused like a header
    with client.websocket_connect("/v1/echo-ws", subprotocols=["koemo", "koemo.key." + keys[2]]) as ws:
        assert ws.receive_text() == "hello"
    with pytest.raises(WebSocketDisconnect) as e, client.websocket_connect(
            "/v1/echo-ws", subprotocols=["koemo", "koemo.key.wrong"]):
        pass
    assert e.value.code == 1008 and "not recognised" in e.value.reason
    # every WebSocket route of the service (/v1/stream among them) refuses a connection without a key
    paths = [r.path for r in client.app.routes if isinstance(r, WebSocketRoute)]
    for path in paths:
        with pytest.raises(WebSocketDisconnect) as e, client.websocket_connect(path):
            pass
        assert e.value.code == 1008, path


def test_every_route_but_the_open_ones_needs_a_key(keys):
    """Deny by default: an endpoint added later is guarded without anyone remembering to."""
    client = keyed(keys)
    open_paths = {"/v1/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    routes = [(m, r.path) for r in client.app.routes if isinstance(r, APIRoute | Route) for m in r.methods - {"HEAD"}]
    assert ("POST", "/v1/predict") in routes and ("GET", "/v1/model") in routes
    for method, path in routes:
        r = client.request(method, path)
        assert (r.status_code == 401) == (path not in open_paths), (method, path, r.status_code)


# ---- rate limit ------------------------------------------------------------------------------
def test_rate_limit_per_key_with_retry_after_and_refill(keys):
    clock = Clock()
    client = keyed(keys, rate_limit=3, clock=clock)
    _, alice, bob = keys
    for _ in range(3):
        assert client.get("/v1/model", headers=bearer(alice)).status_code == 200
    r = client.get("/v1/model", headers=bearer(alice))
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "20"  # 3 a minute: one token every 20 s
    assert r.json()["status"] == 429 and "alice" in r.json()["problem"]
    # another key has its own bucket; health and refused keys spend nothing
    assert client.get("/v1/model", headers=bearer(bob)).status_code == 200
    assert client.get("/v1/health").status_code == 200
    clock.now += 15
    r = client.get("/v1/model", headers=bearer(alice))
    assert r.status_code == 429 and r.headers["Retry-After"] == "5"
    clock.now += 5
    assert client.get("/v1/model", headers=bearer(alice)).status_code == 200
    assert client.get("/v1/model", headers=bearer(alice)).status_code == 429


def test_bucket_refills_to_capacity_and_no_further():
    clock = Clock()
    limiter = RateLimiter(2, clock)
    assert [limiter.take("k") for _ in range(3)][:2] == [0.0, 0.0]
    clock.now += 3600
    assert [limiter.take("k") == 0.0 for _ in range(3)] == [True, True, False]
    assert limiter.take("k") == pytest.approx(30.0)  # 2 a minute
    clock.now += 29.5
    assert 0 < limiter.take("k") < 1  # Retry-After is then rounded up to 1


def test_retry_after_is_at_least_one_second(keys):
    clock = Clock()
    client = keyed(keys, rate_limit=600, clock=clock)  # one token every 0.1 s
    for _ in range(600):
        assert client.get("/v1/model", headers=bearer(keys[1])).status_code == 200
    r = client.get("/v1/model", headers=bearer(keys[1]))
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"


def test_rate_limit_zero_is_off(keys):
    client = keyed(keys, rate_limit=0, clock=Clock())
    assert all(client.get("/v1/model", headers=bearer(keys[1])).status_code == 200 for _ in range(100))


# ---- request id ------------------------------------------------------------------------------
def test_every_response_has_a_request_id(keys):
    client = keyed(keys, rate_limit=1, clock=Clock())
    answers = [client.get("/v1/health"), client.get("/v1/model"), client.get("/v1/model", headers=bearer("x")),
               client.get("/v1/model", headers=bearer(keys[1])), client.get("/v1/model", headers=bearer(keys[1])),
               predict(client, bearer(keys[2]), b"not audio"), client.get("/")]
    assert [r.status_code for r in answers] == [200, 401, 403, 200, 429, 415, 200]
    ids = [r.headers["X-Request-ID"] for r in answers]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)


def test_an_unexpected_error_is_a_json_500_with_the_request_id(caplog):
    client = make_client()

    @client.app.get("/v1/boom")
    async def boom():
        raise RuntimeError("bug")

    client = TestClient(client.app, raise_server_exceptions=False)
    r = client.get("/v1/boom", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500 and r.headers["X-Request-ID"] == "req-500"
    assert r.json()["status"] == 500 and "req-500" in r.json()["problem"]


def test_client_request_id_is_echoed_only_when_sane():
    client = make_client()
    assert client.get("/v1/health", headers={"X-Request-ID": "call-42.a_b"}).headers["X-Request-ID"] == "call-42.a_b"
    for bad in ("x" * 65, "has space", "new\tline", "é"):
        got = client.get("/v1/health", headers={"X-Request-ID": bad.encode("utf-8")}).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", got), bad


def test_log_lines_carry_the_request_id_even_from_the_worker_thread(caplog):
    client = make_client()
    with caplog.at_level(logging.INFO, logger="koemo.serving"):
        r = predict(client, {"X-Request-ID": "req-1"})
        bad = predict(client, {"X-Request-ID": "req-2"}, b"")
    assert r.status_code == 200 and bad.status_code == 422
    records = [rec for rec in caplog.records if rec.name == "koemo.serving"]
    asr = [rec for rec in records if rec.getMessage().startswith("fake ASR")]
    assert asr and asr[0].request_id == "req-1" and asr[0].threadName.startswith("AnyIO worker thread")
    access = [rec for rec in records if rec.getMessage().startswith("predict ")]
    assert [(rec.request_id, rec.getMessage().split()[1]) for rec in access] == [("req-1", "200"), ("req-2", "422")]
    assert request_id.get() == "-"  # nothing leaks out of the request


def test_the_speech_encoder_thread_logs_with_the_request_id(caplog):
    """The speech encoder runs in the predictor's own helper thread beside ASR: its lines carry
    the request's id too (the context is copied into that thread)."""
    from dataclasses import replace

    def speech(audio):
        logging.getLogger("koemo.serving").info("fake speech encoder")
        return np.zeros((4, 8), np.float32)

    client = TestClient(create_app(replace(fake_predictor(), speech_encoder=speech, overlap=True)))
    with caplog.at_level(logging.INFO, logger="koemo.serving"):
        assert predict(client, {"X-Request-ID": "req-9"}).status_code == 200
    lines = [rec for rec in caplog.records if rec.getMessage() == "fake speech encoder"]
    assert lines and lines[0].request_id == "req-9" and lines[0].threadName.startswith("koemo-speech")


def test_uvicorn_and_koemo_log_formats_show_the_request_id(monkeypatch):
    import io

    from koemo.serving.security import uvicorn_log_config

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    config = uvicorn_log_config()
    assert "%(request_id)s" in config["formatters"]["default"]["fmt"]
    assert "%(request_id)s" in config["formatters"]["access"]["fmt"]
    assert all(h["filters"] == ["request_id"] for h in config["handlers"].values())
    token = request_id.set("abc123")
    try:
        handler.handle(logging.makeLogRecord({"name": "koemo.other", "levelname": "INFO", "msg": "hello"}))
    finally:
        request_id.reset(token)
    assert stream.getvalue() == "INFO: [abc123] hello\n"


# ---- CORS ------------------------------------------------------------------------------------
PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization"}


def test_cors_is_closed_by_default():
    client = make_client()
    r = client.get("/v1/model", headers={"Origin": "https://app.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = client.options("/v1/predict", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers


def test_cors_origin_opens_for_that_origin_only(keys):
    client = keyed(keys, cors_origins=("https://app.example",))
    # the preflight carries no key and must still pass; the refusal is readable by the page
    r = client.options("/v1/predict", headers=PREFLIGHT)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = client.get("/v1/model", headers={"Origin": "https://app.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = client.get("/v1/model", headers={"Origin": "https://app.example", **bearer(keys[1])})
    assert r.status_code == 200 and "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = client.get("/v1/model", headers={"Origin": "https://evil.example", **bearer(keys[1])})
    assert "access-control-allow-origin" not in r.headers
    r = client.options("/v1/predict", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


# ---- transcripts in the log ------------------------------------------------------------------
@pytest.mark.parametrize("flag", [False, True], ids=["default", "log-transcripts"])
def test_transcripts_are_logged_only_when_asked(caplog, flag):
    client = make_client(Security(log_transcripts=flag))
    with caplog.at_level(logging.DEBUG):
        r = predict(client)
    assert r.status_code == 200 and r.json()["transcript"] == _FixedWords.words
    access = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("predict 200")]
    assert len(access) == 1 and "label=angry" in access[0] and "audio=1.0s" in access[0]
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert ("SECRET-TRANSCRIPT" in logged) == flag
    assert ("비밀" in logged) == flag


# ---- uploads stay in memory ------------------------------------------------------------------
def test_uploaded_audio_never_touches_the_disk(monkeypatch):
    """A 2 MB multipart upload (starlette's form parser would spool it to a temporary file
    above 1 MB) with every way of making a file refused: still a prediction."""
    import builtins

    import starlette.formparsers

    def refuse(*a, **k):
        raise AssertionError("uploaded audio written to disk")

    real_open = builtins.open

    def open_read_only(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            refuse()
        return real_open(file, mode, *a, **k)

    client = make_client()
    data = wav_bytes(tone(70.0))
    assert len(data) > 2 * 2**20
    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    monkeypatch.setattr(builtins, "open", open_read_only)
    monkeypatch.setattr(os, "open", refuse)
    r = predict(client, data=data)
    assert r.status_code == 200, r.text
    assert r.json()["file"] == "a.wav" and r.json()["duration"] == pytest.approx(70.0)


def test_in_memory_multipart_keeps_the_old_answers():
    client = make_client()
    r = client.post("/v1/predict", files={"other": ("a.wav", WAV, "audio/wav")}, data={"note": "x"})
    assert r.status_code == 422 and "no file field named 'file'" in r.json()["problem"]
    r = client.post("/v1/predict", data={"file": "not a file"}, files={"x": ("b", b"1")})
    assert r.status_code == 422 and "no file field named 'file'" in r.json()["problem"]
    r = client.post("/v1/predict", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 422 and r.json()["problem"].startswith("malformed multipart body")
    r = client.post("/v1/predict", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 422
    r = client.post("/v1/predict", files=[("file", ("second.wav", WAV, "audio/wav"))], data={"a": "1", "b": "2"})
    assert r.status_code == 200 and r.json()["file"] == "second.wav"
    many = [(f"f{i}", (f"{i}.wav", b"x", "audio/wav")) for i in range(12)]
    r = client.post("/v1/predict", files=many)
    assert r.status_code == 422 and "malformed multipart" in r.json()["problem"]


# ---- the command -----------------------------------------------------------------------------
@pytest.fixture
def served(monkeypatch):
    """Runs ``koemo serve ARGS`` with a fake predictor and uvicorn.run captured, not called."""
    import uvicorn

    import koemo.serving.loader
    import koemo.serving.security

    calls: dict = {}
    monkeypatch.setattr(koemo.serving.loader, "load_predictor", lambda *a, **k: fake_predictor())
    monkeypatch.setattr(koemo.serving.security, "uvicorn_log_config", lambda: {"version": 1})
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))

    def run(*args: str):
        from koemo.cli import app

        r = CliRunner().invoke(app, ["serve", *args])
        assert r.exit_code == 0, r.output
        return calls

    return run


def test_serve_binds_to_loopback_by_default_and_is_open(served, caplog):
    with caplog.at_level(logging.WARNING, logger="koemo.serving"):
        calls = served()
    assert calls["host"] == "127.0.0.1" and calls["log_config"] == {"version": 1}
    assert not [r for r in caplog.records if "without API keys" in r.getMessage()]
    assert TestClient(calls["app"]).get("/v1/model").status_code == 200


def test_serve_with_keys_rate_cors_and_transcripts(served, keys, caplog):
    path, alice, _ = keys
    calls = served("--api-keys", str(path), "--rate-limit", "1", "--cors-origin", "https://a.example",
                   "--log-transcripts")
    client = TestClient(calls["app"])
    assert client.get("/v1/model").status_code == 401
    with caplog.at_level(logging.INFO, logger="koemo.serving"):
        r = predict(client, {**bearer(alice), "Origin": "https://a.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://a.example"
    assert "SECRET-TRANSCRIPT" in caplog.text
    assert predict(client, bearer(alice)).status_code == 429


def test_serve_warns_on_an_open_public_bind(served, caplog):
    with caplog.at_level(logging.WARNING, logger="koemo.serving"):
        calls = served("--host", "0.0.0.0")
    assert calls["host"] == "0.0.0.0"
    assert any("without API keys" in r.getMessage() for r in caplog.records)


def test_serve_refuses_a_bad_key_file(served, tmp_path):
    from koemo.cli import app

    (tmp_path / "keys").write_text("oops\n")
    r = CliRunner().invoke(app, ["serve", "--api-keys", str(tmp_path / "keys")])
    assert r.exit_code != 0 and isinstance(r.exception, KoemoError)
    assert str(r.exception).startswith(f"{tmp_path / 'keys'}:1: ")


def test_serve_refuses_a_negative_rate_limit(served):
    from koemo.cli import app

    r = CliRunner().invoke(app, ["serve", "--rate-limit", "-5"])
    assert r.exit_code != 0 and isinstance(r.exception, KoemoError)
    assert str(r.exception) == "--rate-limit -5: use 0 (no limit) or more requests per minute"


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                           ("192.168.1.5", False), ("example.com", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


# ---- the web page with a key -----------------------------------------------------------------
@pytest.fixture
def keyed_server(keys):
    """uvicorn serving the keyed app (fake predictor) on a free loopback port."""
    from tests.serving.conftest import serving

    with serving(create_app(fake_predictor(), security=Security(keys=KeyStore.load(keys[0])))) as url:
        yield url


@pytest.mark.slow  # headless Chromium, as tests/serving/test_browser.py
def test_web_page_sends_the_key_it_is_given(browser, keyed_server, keys, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wav = tmp_path / "a.wav"
    wav.write_bytes(WAV)
    browser.get(keyed_server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "needs an API key"))
    browser.find_element(By.ID, "api-key").send_keys(keys[1], Keys.TAB)
    wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "labels:"))
    browser.find_element(By.ID, "file").send_keys(str(wav))
    wait.until(lambda b: b.find_element(By.ID, "result-label").get_attribute("data-label"))
    assert browser.find_element(By.ID, "result-label").get_attribute("data-label") == "angry"
    assert browser.execute_script("return sessionStorage.getItem('koemo-api-key')") == keys[1]
    browser.refresh()  # the key survives a reload of the tab
    wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "labels:"))
