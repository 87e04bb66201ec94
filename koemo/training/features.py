"""The one place the trainer touches the feature store (imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from koemo.config import Recipe
from koemo.data.manifest import Utterance
from koemo.paths import cache_root


def store_for(recipe: Recipe):
    from koemo.encoders.store import FeatureStore

    return FeatureStore(Path(cache_root(recipe.cache_dir)) / "features" if recipe.cache_dir else None)


def load_features(
    recipe: Recipe, utts: Sequence[Utterance], sources: Sequence[str], *,
    extract_missing: bool = True, progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], dict]:
    """Frozen features of the recipe's encoders: ``(audio, {source: text}, encoder ids)``.

    Missing entries are extracted into the store (slow the first time, then cached). An
    ``asr:`` source covers only the utterances that have that transcript; the trainer names
    any utterance it needs and does not find (with the ``koemo transcribe`` command).
    """
    utts = list(utts)
    store = store_for(recipe)
    enc = recipe.encoders
    audio = store.speech(enc.speech, utts, extract_missing, layer=enc.speech_layer, progress=progress)
    text = {}
    for source in sources:
        have = [u for u in utts if source == "gold" or source in u.transcripts]
        text[source] = store.text(enc.text, have, source=source, extract_missing=extract_missing,
                                  progress=progress) if have else {}
    meta = {"speech": {**encoder_meta("speech", enc.speech, enc.speech_layer), "layer": enc.speech_layer},
            "text": encoder_meta("text", enc.text)}
    return audio, text, meta


def encoder_meta(kind: str, name: str, layer: int | None = None, finetuned: bool = False) -> dict:
    """What a bundle records of an encoder: name, id (version, settings, weights checksum), dim."""
    from koemo.encoders import get_speech_encoder, get_text_encoder

    if kind == "speech":
        e = get_speech_encoder(name, layer=layer)
        return {"name": name, "id": e.id, "dim": e.dim, "finetuned": finetuned}
    e = get_text_encoder(name)
    return {"name": name, "id": e.id, "dim": e.dim, "finetuned": finetuned,
            "sentence_vector": bool(getattr(e, "sentence_vector", False))}
