"""Who may use ``koemo serve``, how often, and how each request is traced.

- API keys live in a file of hashes (:class:`KeyStore`); a key travels as
  ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. No key: 401; an unknown key: 403.
- A token bucket per key (:class:`RateLimiter`) answers 429 with ``Retry-After`` beyond the rate.
- Every response carries ``X-Request-ID`` and every log line the same id (:data:`request_id`,
  :class:`RequestIdFilter`), so one complaint can be matched to one log line.
- CORS stays closed unless origins are named.

Both middlewares are plain ASGI so they guard WebSocket connections as well as HTTP requests.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from koemo.errors import KoemoError

log = logging.getLogger("koemo.serving")

#: the request being served, "-" outside one; worker threads inherit it (anyio copies the context)
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("koemo_request_id", default="-")

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: paths anyone may fetch: liveness for load balancers, and the web page and docs, which must load
#: before a person can type a key into them (they hold no data; the API calls they make need the key)
OPEN_PATHS = frozenset({"/v1/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
#: a WebSocket subprotocol carrying the key (browsers cannot set headers on a WebSocket)
WS_KEY_PREFIX = "koemo.key."


def error_response(where: str, problem: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The service's one error shape, ``{"error", "file", "problem", "status"}``."""
    body = {"error": f"{where}: {problem}", "file": where, "problem": problem, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


# ---- keys ------------------------------------------------------------------------------------
def hash_key(key: str) -> str:
    """SHA-256 of a key, hex.

    A plain, fast hash is enough here, unlike for passwords: keys are 256-bit random tokens
    (:func:`new_key`), so a stolen key file cannot be reversed by guessing, and a slow KDF
    (PBKDF2 at 600k iterations) would cost ~0.5 s of CPU on every request, which is itself a
    denial-of-service lever. Salting buys nothing against tokens nobody can enumerate.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (32 bytes, URL-safe base64, 43 characters)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyStore:
    """Key names and their SHA-256 hashes, read from a key file.

    File format, one key per line: ``NAME:sha256:HEX`` (64 hex digits); ``#`` comments and blank
    lines allowed. The raw keys are never stored.
    """

    digests: dict[str, bytes] = field(default_factory=dict)
    path: str = "<keys>"

    @classmethod
    def load(cls, path: str | Path) -> KeyStore:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise KoemoError(f"{path}: cannot read the API key file ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise KoemoError(f"{path}: the API key file is not UTF-8 text") from None
        digests: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) != 3 or parts[1] != "sha256":
                raise KoemoError(f"{path}:{number}: expected NAME:sha256:HEX, got {line[:40]!r}")
            name, _, digest = parts
            if not KEY_NAME.fullmatch(name):
                raise KoemoError(f"{path}:{number}: key name {name[:40]!r} must be 1-64 letters, digits or ._-")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise KoemoError(f"{path}:{number}: key {name!r}: the hash must be 64 lowercase hex digits")
            if name in digests:
                raise KoemoError(f"{path}:{number}: key name {name!r} appears twice")
            if bytes.fromhex(digest) in digests.values():
                raise KoemoError(f"{path}:{number}: key {name!r} has the same hash as another key")
            digests[name] = bytes.fromhex(digest)
        if not digests:
            raise KoemoError(f"{path}: the API key file holds no keys; add one with: koemo keys add {path} NAME")
        return cls(digests, str(path))

    def names(self) -> list[str]:
        return list(self.digests)

    def identify(self, key: str) -> str | None:
        """The name of ``key``, or None. Compares the hash with every stored one in constant
        time, so neither timing nor the order of the file tells how close a guess was."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, stored in self.digests.items():
            if hmac.compare_digest(digest, stored):
                found = name
        return found


def add_key(path: str | Path, name: str) -> str:
    """Append a new key called ``name`` to the key file (created with mode 0600) and return the
    key itself: it is shown once and only its hash is kept."""
    path = Path(path)
    if not KEY_NAME.fullmatch(name):
        raise KoemoError(f"{name!r}: a key name is 1-64 letters, digits or ._-")
    if path.exists() and _has_keys(path) and name in KeyStore.load(path).digests:
        raise KoemoError(f"{path}: a key named {name!r} exists already")
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{name}:sha256:{hash_key(key)}\n")
    return key


def _has_keys(path: Path) -> bool:
    return any(line.strip() and not line.strip().startswith("#") for line in path.read_text(encoding="utf-8").splitlines())


# ---- rate limit ------------------------------------------------------------------------------
class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute on average, bursts up to
    ``per_minute`` at once. A lock (not an asyncio one) because it is also safe from threads and
    nothing inside it waits."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, name: str) -> float:
        """Spend one token of ``name``'s bucket: 0.0 if allowed, else seconds until one refills."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(name, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / self.rate


# ---- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Security:
    """What ``koemo serve`` was told: keys (None: the API is open), requests per minute per key
    (0: no limit), origins allowed by CORS (none: no cross-origin reads), and whether transcripts
    may appear in the log (they are personal data: off by default)."""

    keys: KeyStore | None = None
    rate_limit: int = 60
    cors_origins: tuple[str, ...] = ()
    log_transcripts: bool = False
    clock: Callable[[], float] = time.monotonic


def install_security(app: Any, security: Security) -> None:
    """Add the middlewares to a FastAPI/Starlette app. The last added runs first: request ids
    outermost (every answer gets one), then CORS (preflights need no key, and refusals carry the
    CORS headers the browser needs to read them), then keys and the rate limit."""
    from starlette.middleware.cors import CORSMiddleware

    if security.keys is not None:
        limiter = RateLimiter(security.rate_limit, security.clock) if security.rate_limit > 0 else None
        app.add_middleware(KeyMiddleware, keys=security.keys, limiter=limiter)
    if security.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(security.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        )
    app.add_middleware(RequestIdMiddleware)


# ---- middlewares -----------------------------------------------------------------------------
def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestIdMiddleware:
    """Gives each request an id (the client's ``X-Request-ID`` if it is 1-64 of ``[A-Za-z0-9._-]``,
    else a new uuid4 hex), sets :data:`request_id` for the log, and adds the header to the answer
    (a WebSocket's accept too). An unhandled error still gets a JSON 500 with the id."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        sent = _header(scope, b"x-request-id")
        rid = sent if sent and _CLIENT_ID.fullmatch(sent) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept"):
                started = True
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if scope["type"] == "http" and not started:
                # the id stays set: the server's traceback line carries it too
                await error_response("server", f"internal error (request {rid})", 500)(scope, receive, send_with_id)
            raise
        request_id.reset(token)


class KeyMiddleware:
    """Refuses requests without a known key (except :data:`OPEN_PATHS`) and over the rate limit.

    HTTP: 401 with ``WWW-Authenticate: Bearer`` (no key), 403 (unknown key), 429 with
    ``Retry-After`` (too many). WebSocket: closed with code 1008 (policy violation) before it is
    accepted, which servers answer with HTTP 403.
    """

    def __init__(self, app: Any, keys: KeyStore, limiter: RateLimiter | None = None):
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        key = self._key(scope)
        name = self.keys.identify(key) if key else None
        if name is None:
            status = 401 if key is None else 403
            problem = ("this service needs an API key (Authorization: Bearer KEY or X-API-Key: KEY)"
                       if status == 401 else "API key not recognised")
            log.warning("%s %s refused: %s", scope.get("method", "WEBSOCKET"), path,
                        "no API key" if status == 401 else "unknown API key")
            await self._refuse(scope, receive, send, status, problem, {"WWW-Authenticate": "Bearer"} if status == 401 else None)
            return
        wait = self.limiter.take(name) if self.limiter else 0.0
        if wait > 0:
            retry = max(1, math.ceil(wait))
            log.warning("%s %s refused: key %r over its rate limit", scope.get("method", "WEBSOCKET"), path, name)
            await self._refuse(scope, receive, send, 429, f"rate limit of key {name!r} reached; retry in {retry} s",
                               {"Retry-After": str(retry)})
            return
        scope.setdefault("state", {})["api_key"] = name
        await self.app(scope, receive, send)

    @staticmethod
    def _key(scope: dict[str, Any]) -> str | None:
        """The key sent, None if none. An ``Authorization`` header of another scheme is not a key.

        A browser cannot set headers on a WebSocket, so there the key may also come as a
        subprotocol ``koemo.key.KEY`` (the web page offers ``["koemo", "koemo.key.KEY"]`` and the
        server answers ``koemo``, never echoing the key); never in the URL, which logs keep."""
        if scope["type"] == "websocket":
            for proto in scope.get("subprotocols") or ():
                if proto.startswith(WS_KEY_PREFIX) and len(proto) > len(WS_KEY_PREFIX):
                    return proto[len(WS_KEY_PREFIX):]
        auth = _header(scope, b"authorization")
        if auth:
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        key = _header(scope, b"x-api-key")
        return key.strip() if key and key.strip() else None

    @staticmethod
    async def _refuse(scope, receive, send, status: int, problem: str, headers: dict[str, str] | None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
            return
        await error_response("api key", problem, status, headers)(scope, receive, send)


# ---- logging ---------------------------------------------------------------------------------
class RequestIdFilter(logging.Filter):
    """Puts the current request id on each record as ``record.request_id`` (never drops one).

    On the ``koemo.serving`` logger it tags records when they are made (in the request's own
    context, worker threads included); on handlers it covers records from any logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def tag_service_log() -> None:
    """Tag every ``koemo.serving`` record with the request id (idempotent)."""
    logger = logging.getLogger("koemo.serving")
    if not any(isinstance(f, RequestIdFilter) for f in logger.filters):
        logger.addFilter(RequestIdFilter())


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with the request id in every line (its access log line is
    written inside the request, so it sees the id), and the root logger's handlers (koemo's own
    lines) given the same format."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": RequestIdFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
    config["formatters"]["default"]["fmt"] = "%(levelprefix)s [%(request_id)s] %(message)s"
    config["formatters"]["access"]["fmt"] = '%(levelprefix)s [%(request_id)s] %(client_addr)s - "%(request_line)s" %(status_code)s'
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(levelname)s: [%(request_id)s] %(message)s"))
    return config


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
