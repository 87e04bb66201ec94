"""Canonical emotion labels, their aliases (English variants and Korean names) and label sets.

Datasets spell emotions many ways (``Angry``/``anger``/``분노``/``화남``); everything inside koemo
uses the eight canonical names of the AIHub multimodal dataset the paper used.
"""

from __future__ import annotations

import unicodedata

from koemo.errors import UnknownLabelError

CANONICAL = ("happy", "surprise", "angry", "sad", "dislike", "fear", "contempt", "neutral")

ALIASES: dict[str, tuple[str, ...]] = {
    "happy": ("happiness", "joy", "happy", "기쁨", "행복", "즐거움"),
    "surprise": ("surprised", "surprise", "놀람"),
    "angry": ("anger", "angry", "mad", "분노", "화남"),
    "sad": ("sadness", "sad", "슬픔"),
    "dislike": ("disgust", "disgusted", "dislike", "혐오", "싫음"),
    "fear": ("fear", "fearful", "scared", "공포", "두려움"),
    "contempt": ("contempt", "경멸"),
    "neutral": ("neutral", "none", "중립", "일반", "평범"),
}

_LOOKUP = {
    alias.casefold(): canonical for canonical, names in ALIASES.items() for alias in names
}

LABEL_SETS: dict[str, tuple[str, ...]] = {
    # The paper drops fear and contempt (too rare) and keeps six classes.
    "paper6": ("happy", "surprise", "angry", "sad", "dislike", "neutral"),
    "aihub8": CANONICAL,
    "emotiontts4": ("neutral", "happy", "sad", "angry"),
    "korean-text7": ("happy", "surprise", "angry", "sad", "dislike", "fear", "neutral"),
}

KOREAN_NAME = {
    "happy": "기쁨",
    "surprise": "놀람",
    "angry": "분노",
    "sad": "슬픔",
    "dislike": "혐오",
    "fear": "공포",
    "contempt": "경멸",
    "neutral": "중립",
}


def normalize_label(raw: object, where: str = "label") -> str:
    """Map any spelling of an emotion to its canonical name, or raise naming the value."""
    text = unicodedata.normalize("NFC", str(raw if raw is not None else "")).strip().casefold()
    if not text:
        raise UnknownLabelError(where, "empty emotion label")
    try:
        return _LOOKUP[text]
    except KeyError:
        raise UnknownLabelError(
            where, f"unknown emotion label {str(raw).strip()!r} (known: {', '.join(CANONICAL)})"
        ) from None


def resolve_label_set(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A named label set (``paper6``) or an explicit list (``happy,sad``), canonicalised."""
    if isinstance(spec, str):
        if spec in LABEL_SETS:
            return LABEL_SETS[spec]
        spec = [s for s in spec.split(",") if s.strip()]
    labels = tuple(normalize_label(s, where="label set") for s in spec)
    if not labels:
        raise UnknownLabelError("label set", "no labels given")
    return labels
