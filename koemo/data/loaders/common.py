"""Checks every loader applies to an utterance before it enters a manifest."""

from __future__ import annotations

from pathlib import Path

from koemo.data.audio import SAMPLE_RATE, load_audio
from koemo.errors import BadInputError


def read_text_file(path: Path) -> str:
    """A UTF-8 text file (BOM allowed), NFC-normalised, or a one-line error naming it."""
    import unicodedata

    if not path.is_file():
        raise BadInputError(path, "transcript file is missing")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"transcript is not UTF-8 (invalid byte at {e.start})") from None
    text = unicodedata.normalize("NFC", " ".join(text.split()))
    if not text:
        raise BadInputError(path, "transcript is empty")
    return text


def checked_duration(audio: str | Path, start: float | None = None, end: float | None = None) -> float:
    """Decode the audio once to prove it is readable and not silent; return its duration."""
    samples = load_audio(audio, start=start, end=end)
    return len(samples) / SAMPLE_RATE
