"""Limits of the service and of ``koemo predict``, and turning uploaded bytes into checked audio.

Every way an upload can be bad ends in a :class:`RejectedAudio` with an HTTP status and a one-line
message naming the file: 413 for too big or too long, 415 for bytes that are not a readable audio
format, 422 for audio that is readable but unusable (empty, zero-length, truncated, silent).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from koemo.data.audio import SAMPLE_RATE, load_audio
from koemo.errors import BadInputError


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service (and one file of ``koemo predict``)."""

    max_upload_mb: float = 25.0  # bytes of the uploaded file (base64 JSON: of the decoded audio)
    max_duration_s: float = 300.0  # longer audio is refused with 413; None-like 0 = no limit
    segment_over_s: float = 15.0  # longer audio is cut into utterances by voice activity
    workers: int = 1  # requests predicted at the same time (each uses all torch threads)
    max_queue: int = 16  # requests waiting for a worker beyond which the service answers 503
    max_streams: int = 4  # WebSocket streams (/v1/stream) open at the same time

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class RejectedAudio(BadInputError):
    """Bad input with the HTTP status that describes it."""

    def __init__(self, where: str, problem: str, status: int):
        super().__init__(where, problem)
        self.status = status


def check_wav_complete(data: bytes, where: str) -> None:
    """Refuse a RIFF/WAVE file whose data chunk is shorter than its header declares.

    libsndfile silently reads what is there, so a cut-off upload would otherwise be classified
    as if it were the whole recording. Streaming writers that leave the size as 0 or 0xFFFFFFFF
    (length unknown) are accepted.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return
    endian = "<" if data[:4] == b"RIFF" else ">"
    pos = 12
    block_align = 0
    rate = 0
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack(endian + "I", data[pos + 4 : pos + 8])
        body = pos + 8
        if cid == b"fmt " and body + 14 <= len(data):
            _fmt, _ch, rate, _bps, block_align = struct.unpack(endian + "HHIIH", data[body : body + 14])
        if cid == b"data":
            if size in (0, 0xFFFFFFFF):
                return
            have = len(data) - body
            if have < size:
                if block_align and rate:
                    declared = size / block_align / rate
                    held = have / block_align / rate
                    detail = f"header declares {declared:.2f} s of audio but the file holds {held:.2f} s"
                else:
                    detail = f"header declares {size} bytes of audio but the file holds {have}"
                raise RejectedAudio(where, f"truncated WAV file ({detail})", 422)
            return
        pos = body + size + (size & 1)


def decode_audio(data: bytes, where: str, limits: Limits) -> np.ndarray:
    """Uploaded bytes -> 16 kHz mono float32, or :class:`RejectedAudio` saying what is wrong."""
    if len(data) > limits.max_upload_bytes:
        raise RejectedAudio(
            where, f"upload is {len(data) / 2**20:.1f} MB; the limit is {limits.max_upload_mb:g} MB", 413
        )
    if not data:
        raise RejectedAudio(where, "empty upload (0 bytes)", 422)
    check_wav_complete(data, where)
    try:
        audio = load_audio(data, name=where)
    except BadInputError as e:
        status = 415 if e.problem.startswith("not readable as audio") else 422
        problem = e.problem
        if status == 415:
            problem = problem.replace("not readable as audio", "not a supported audio format", 1)
        raise RejectedAudio(where, problem, status) from None
    check_duration(audio, where, limits)
    return audio


def check_duration(audio: np.ndarray, where: str, limits: Limits) -> None:
    seconds = len(audio) / SAMPLE_RATE
    if limits.max_duration_s and seconds > limits.max_duration_s:
        raise RejectedAudio(
            where, f"audio is {seconds:.1f} s long; the limit is {limits.max_duration_s:g} s", 413
        )
