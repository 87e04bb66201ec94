"""The HTTP service: ``POST /v1/predict``, ``GET /v1/health``, ``GET /v1/model``, the web page at ``/``.

Models are loaded once (a :class:`~koemo.serving.predictor.Predictor` handed to :func:`create_app`);
each request is decoded and predicted in a worker thread, at most ``Limits.workers`` at a time, and
beyond ``Limits.max_queue`` waiting requests the service answers 503 rather than piling up work.
Bad audio gets a 4xx JSON error ``{"error", "file", "problem", "status"}``, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from importlib import resources
from typing import Any, Optional

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from koemo.errors import BadInputError, KoemoError
from koemo.serving.limits import Limits, RejectedAudio, decode_audio
from koemo.serving.predictor import Predictor
from koemo.serving.security import Security, error_response, install_security, tag_service_log
from koemo.serving.sessions import NORMALISE_MODES, SESSION_ID, Session, Sessions
from koemo.serving.stream import register_stream

log = logging.getLogger("koemo.serving")

UPLOAD_NAME = "<uploaded audio>"


# ---- schemas (OpenAPI) ---------------------------------------------------------------------
class Contribution(BaseModel):
    audio: float = Field(description="share of the decision owed to the speech encoder (0-1)")
    text: float = Field(description="share owed to the text encoder (0-1)")


class Segment(BaseModel):
    start: float = Field(description="seconds from the start of the recording")
    end: float
    transcript: str
    label: str
    probabilities: dict[str, float]
    contribution: Optional[Contribution] = None


class Prediction(BaseModel):
    file: str
    transcript: str = Field(description="ASR transcript (segments joined)")
    label: str = Field(description="most probable emotion")
    probabilities: dict[str, float] = Field(description="emotion distribution; sums to 1")
    segments: list[Segment]
    contribution: Optional[Contribution] = None
    duration: float = Field(description="seconds of audio")
    timings: dict[str, float] = Field(description="seconds per stage: asr, speech_encoder, text_encoder, fusion, vad, decode, total")
    warnings: list[str] = Field(default_factory=list, description="what makes this answer doubtful, e.g. an "
                                "utterance with too little speech to judge; empty when nothing does")


class AudioJSON(BaseModel):
    audio_base64: str = Field(description="the audio file's bytes, base64-encoded (any format koemo reads)")
    filename: Optional[str] = Field(None, description="a name used in error messages")


class ErrorBody(BaseModel):
    error: str = Field(description="one line: the file and the problem")
    file: str
    problem: str
    status: int


class Health(BaseModel):
    status: str
    busy: int
    queued: int
    uptime_s: float


_ERRORS = {
    413: "upload too large or audio too long",
    415: "not a supported audio format or content type",
    422: "unusable audio or malformed request",
    503: "too many requests waiting; retry later",
}

_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
        "application/json": {"schema": AudioJSON.model_json_schema()},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _error(where: str, problem: str, status: int) -> JSONResponse:
    return error_response(where, problem, status, {"Retry-After": "1"} if status == 503 else None)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (without reading it all) one longer than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_multipart(content_type: str, body: bytes) -> tuple[bytes, str]:
    """The ``file`` part of a multipart body (already in memory, bounded), parsed in memory.

    Not starlette's ``Request.form()``: it spools file parts over 1 MB to a temporary file on
    disk, and uploaded recordings must never touch the disk.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RejectedAudio(UPLOAD_NAME, "malformed multipart body (missing boundary)", 422)
    parts: list[dict[str, Any]] = []
    header = [b"", b""]

    def on_part_begin() -> None:
        if len(parts) >= 9:
            raise ValueError("more than 9 parts")
        parts.append({"disposition": b"", "data": bytearray()})

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        if header[0].lower() == b"content-disposition":
            parts[-1]["disposition"] = header[1]
        header[0], header[1] = b"", b""

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
        })
        parser.write(body)
        parser.finalize()
    except Exception as e:  # noqa: BLE001 - malformed multipart comes in many shapes
        raise RejectedAudio(UPLOAD_NAME, f"malformed multipart body ({str(e).splitlines()[0] if str(e) else type(e).__name__})", 422) from None
    for part in parts:
        _, options = parse_options_header(part["disposition"])
        if options.get(b"name") == b"file" and b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
            return bytes(part["data"]), (filename or UPLOAD_NAME).replace("\n", " ")[:200]
    raise RejectedAudio(UPLOAD_NAME, "multipart body has no file field named 'file'", 422)


def _parse_json(body: bytes) -> tuple[bytes, str]:
    try:
        payload = AudioJSON.model_validate_json(body)
    except ValueError as e:
        first = str(e).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else "invalid JSON"
        raise RejectedAudio(UPLOAD_NAME, f"JSON body must be {{\"audio_base64\": ...}} ({detail})", 422) from None
    name = (payload.filename or UPLOAD_NAME).replace("\n", " ")[:200]
    try:
        data = base64.b64decode(payload.audio_base64, validate=True)
    except (binascii.Error, ValueError):
        raise RejectedAudio(name, "audio_base64 is not valid base64", 422) from None
    return data, name


def create_app(predictor: Predictor, limits: Limits | None = None, security: Security | None = None,
               deployment_session: bool = False) -> FastAPI:
    """The FastAPI app serving ``predictor`` (already loaded) under ``limits``; ``security``: API
    keys, rate limit, CORS, transcript logging (default: open, no CORS, no transcripts logged).
    ``deployment_session``: requests without ``session=ID`` share one session, so each is
    normalised by the voice statistics of all such requests so far (this deployment's channel and
    callers) instead of the studio corpus's; measured in ``benchmarks/deployment_stats.py``."""
    limits = limits or predictor.limits
    security = security or Security()
    tag_service_log()
    app = FastAPI(
        title="koemo",
        summary="Korean multimodal speech emotion recognition robust to ASR errors",
        description=(
            "Upload a recording; koemo transcribes it, encodes audio and text, fuses them and returns "
            "the emotion distribution, per-utterance labels (long recordings are cut by voice activity) "
            "and how much of the decision came from the audio vs. the text. Web page at `/`."
        ),
        version=predictor.describe().get("koemo_version", "0"),
    )
    state = {"busy": 0, "queued": 0, "started": time.time()}
    limiter = anyio.CapacityLimiter(max(1, limits.workers))
    # JSON inflates the audio by 4/3 (base64); multipart adds headers. Both stay bounded.
    body_limit = limits.max_upload_bytes * 4 // 3 + 64 * 1024

    sessions = Sessions()
    register_stream(app, predictor, limits, sessions=sessions, limiter=limiter)  # WebSocket /v1/stream
    # not in `sessions`: no id a client could name, no idle expiry, never evicted by other sessions
    deployment = Session() if deployment_session else None

    def run_job(data: bytes, name: str, session_id: str | None, normalise: str | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        audio = decode_audio(data, name, limits)
        decode_s = time.perf_counter() - t0
        session = sessions.get(session_id) if session_id else deployment
        result = predictor.predict(audio, name=name, session=session, normalise=normalise)
        result["timings"]["decode"] = round(decode_s, 4)
        result["timings"]["total"] = round(result["timings"]["total"] + decode_s, 4)
        return {"file": name, **result}

    @app.post(
        "/v1/predict",
        response_model=Prediction,
        summary="Emotion of an uploaded recording",
        description=(
            "Send the audio as multipart form field `file`, as JSON `{\"audio_base64\": ...}`, or as the "
            f"raw request body. Limits: {limits.max_upload_mb:g} MB, {limits.max_duration_s:g} s; "
            f"recordings over {limits.segment_over_s:g} s are cut into utterances. Query `session=ID`: "
            "recordings of one speaker or call share an id, and each is normalised by the voice "
            "statistics of the session so far (`normalise=speaker`, the default with a session); "
            "`normalise=file` uses the recording's own utterances, `none` the training corpus's. "
            + ("This server keeps a deployment session: a request without `session` joins it (all "
               "such requests so far normalise each one)." if deployment_session else
               "Without `session`, a recording is its own group (`file`).")
        ),
        openapi_extra={"requestBody": _PREDICT_BODY},
        responses={code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()},
    )
    async def predict(request: Request, session: Optional[str] = None, normalise: Optional[str] = None):
        started = time.perf_counter()
        response = await _predict(request, session, normalise)
        _access_log(response, started)
        return response

    def _access_log(response: Any, started: float) -> None:
        """One line per prediction; the transcript only with ``log_transcripts`` (personal data)."""
        took = time.perf_counter() - started
        if isinstance(response, dict):
            extra = f" transcript={response['transcript']!r}" if security.log_transcripts else ""
            log.info("predict 200 %.2fs file=%r label=%s audio=%.1fs%s", took, response["file"],
                     response["label"], response["duration"], extra)
        else:
            log.info("predict %d %.2fs %s", response.status_code, took, bytes(response.body).decode("utf-8", "replace"))

    async def _predict(request: Request, session: Optional[str], normalise: Optional[str]):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if session is not None and not SESSION_ID.fullmatch(session):
                raise RejectedAudio("session", "a session id is 1-64 letters, digits or ._:-", 422)
            if normalise is not None and normalise not in NORMALISE_MODES:
                raise RejectedAudio("normalise", f"normalise must be one of {', '.join(NORMALISE_MODES)}", 422)
            if not (
                ctype in ("multipart/form-data", "application/json", "application/octet-stream")
                or ctype.startswith(("audio/", "video/"))
            ):
                raise RejectedAudio(
                    UPLOAD_NAME,
                    f"unsupported content type {ctype or '(none)'!r}; send multipart/form-data, "
                    "application/json or the audio bytes",
                    415,
                )
            try:
                body = await _read_body(request, body_limit)
            except _TooLarge as e:
                raise RejectedAudio(
                    UPLOAD_NAME, f"request body is {e.args[0] / 2**20:.1f} MB or more; the limit is {limits.max_upload_mb:g} MB", 413
                ) from None
            if ctype == "multipart/form-data":
                data, name = _parse_multipart(request.headers.get("content-type", ""), body)
            elif ctype == "application/json":
                data, name = _parse_json(body)
            else:
                data, name = body, UPLOAD_NAME
            if limiter.available_tokens < 1 and state["queued"] >= limits.max_queue:
                return _error(name, f"{state['queued']} requests are waiting; retry later", 503)
            state["queued"] += 1
            waiting = True
            try:
                async with limiter:
                    state["queued"] -= 1
                    waiting = False
                    state["busy"] += 1
                    try:
                        result = await anyio.to_thread.run_sync(run_job, data, name, session, normalise)
                    finally:
                        state["busy"] -= 1
            finally:
                if waiting:  # cancelled (client gone) before a worker was free
                    state["queued"] -= 1
            return result
        except RejectedAudio as e:
            return _error(e.where, e.problem, e.status)
        except BadInputError as e:
            return _error(e.where, e.problem, 422)

    @app.get("/v1/health", response_model=Health, summary="Liveness and load")
    async def health():
        return {
            "status": "ok",
            "busy": state["busy"],
            "queued": state["queued"],
            "uptime_s": round(time.time() - state["started"], 1),
        }

    @app.get("/v1/model", summary="Labels, encoders and versions of the loaded model")
    async def model() -> dict[str, Any]:
        seen = deployment.moments.clips if deployment is not None and deployment.moments is not None else 0
        limits_ = {"max_upload_mb": limits.max_upload_mb, "max_duration_s": limits.max_duration_s,
                   "segment_over_s": limits.segment_over_s, "workers": limits.workers}
        return {**predictor.describe(), "deployment_session": {"on": deployment is not None, "utterances": seen},
                "limits": limits_}

    @app.exception_handler(KoemoError)
    async def koemo_error(request: Request, exc: KoemoError):
        log.error("request failed: %s", exc)
        return JSONResponse({"error": str(exc), "file": "", "problem": str(exc), "status": 500}, status_code=500)

    static = resources.files("koemo.serving") / "static"

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    install_security(app, security)
    return app
