"""The one place the trainer touches the feature store (imported lazily), and the step from the
store's frames to what the head reads (:func:`speech_input`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from koemo.config import AugmentConfig, Recipe
from koemo.data.manifest import Utterance
from koemo.encoders.base import speech_settings
from koemo.encoders.store import store_for
from koemo.errors import KoemoError

if TYPE_CHECKING:
    from koemo.fusion.inputs import Normaliser


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
    settings = speech_settings(enc)
    audio = speech_frames(store, enc, utts, extract_missing=extract_missing, progress=progress)
    text = {}
    for source in sources:
        have = [u for u in utts if source == "gold" or source in u.transcripts]
        text[source] = store.text(enc.text, have, source=source, extract_missing=extract_missing,
                                  progress=progress) if have else {}
    meta = {"speech": {**encoder_meta("speech", enc.speech, **settings), "layer": enc.speech_layer,
                       **({"prosody": True} if enc.prosody else {}),
                       **({"trim_margin": enc.trim_margin} if enc.trim_margin is not None else {})},
            "text": encoder_meta("text", enc.text)}
    return audio, text, meta


def speech_frames(store, enc, utts: Sequence[Utterance], *, name: str | None = None, transform=None,
                  extract_missing: bool = True, progress: bool = True) -> dict[str, np.ndarray]:
    """The speech features a recipe's ``encoders`` section ``enc`` reads for ``utts``, from the
    store (extracted where missing): encoder ``name`` (default: the section's) with the section's
    settings (:func:`~koemo.encoders.base.speech_settings`), and for the section's own encoder the
    prosodic functionals appended where ``encoders.prosody`` is on (of the same ``transform``, an
    augmentation), each clip first cut to its speech where ``encoders.trim_margin`` is set
    (:class:`~koemo.data.audio.EdgeTrim`). One owner for training, the grid's inputs and the
    augmented copies."""
    name = name or enc.speech
    if getattr(enc, "trim_margin", None) is not None:  # cut as the service cuts, then augment
        from koemo.data.audio import EdgeTrim

        transform = EdgeTrim(float(enc.trim_margin), then=transform)
    frames = store.speech(name, list(utts), extract_missing, progress=progress, transform=transform,
                          **speech_settings(enc, name))
    if enc.prosody and name == enc.speech:
        from koemo.encoders.prosody import add_prosody

        frames = add_prosody(store, frames, utts, transform=transform, progress=progress,
                             extract_missing=extract_missing)
    return frames


def audio_copies(cfg: AugmentConfig, store, encoders, utts: Sequence[Utterance],
                 progress: bool = True) -> list[Mapping[str, np.ndarray]]:
    """The speech features of ``cfg.copies`` augmented copies of every clip (the transforms of
    :mod:`koemo.training.augment`), as the recipe's ``encoders`` section reads them
    (:func:`speech_frames`: from the store, or extracted into it). Without an audio transform
    the copies are the clean features (to be frame-masked)."""
    from koemo.training.augment import AudioTransform, check

    check(cfg)
    if not cfg.copies:
        return []
    if not (cfg.noise or cfg.speed or cfg.volume_db):
        return [speech_frames(store, encoders, utts, progress=progress)] * cfg.copies
    pool = tuple(utts)
    return [speech_frames(store, encoders, utts, transform=AudioTransform(cfg, k, pool), progress=progress)
            for k in range(cfg.copies)]


def encoder_meta(kind: str, name: str, layer: int | None = None, finetuned: bool = False, **options) -> dict:
    """What a bundle records of an encoder: name, id (version, settings, weights checksum), dim.
    ``options``: the speech encoder's other settings (:func:`koemo.encoders.base.speech_settings`)."""
    from koemo.encoders import get_speech_encoder, get_text_encoder

    if kind == "speech":
        e = get_speech_encoder(name, layer=layer, **options)
        return {"name": name, "id": e.id, "dim": e.dim, "finetuned": finetuned}
    e = get_text_encoder(name)
    return {"name": name, "id": e.id, "dim": e.dim, "finetuned": finetuned,
            "sentence_vector": bool(getattr(e, "sentence_vector", False))}


@dataclass
class SpeechInput:
    """How a job's speech frames became its head's input (:mod:`koemo.fusion.inputs`); the
    bundle records it, so ``predict`` builds the same input in service."""

    view: str  # frames | stats
    layer: int | str | None
    normaliser: Normaliser | None = None
    pool: int = 1  # frames averaged into one (frames view)
    layers: list[int] | None = None  # of stacked layers, those the head reads (None: all)

    def meta(self) -> dict:
        norm = self.normaliser.to_meta() if self.normaliser else {"mode": "none"}
        return {"view": self.view, "layer": self.layer, "normalise": norm, "pool": self.pool,
                **({"layers": list(self.layers)} if self.layers is not None else {})}

    def arrays(self) -> dict[str, np.ndarray]:
        return self.normaliser.to_arrays() if self.normaliser else {}


def mixed_groups(speakers: Mapping[str, str], k: int, seed: int) -> dict[str, str]:
    """Each clip's group when the speakers are dealt, in a random order (``seed``), into groups
    of ``k`` (the last may be smaller): clip id -> group name."""
    names = sorted(set(speakers.values()))
    order = np.random.default_rng(seed).permutation(len(names))
    group_of = {names[j]: f"mixed-{i // k}" for i, j in enumerate(order)}
    return {u: group_of[s] for u, s in speakers.items()}


def speech_input(recipe: Recipe, frames: Mapping[str, np.ndarray], utts: Sequence[Utterance],
                 copies: Sequence[Mapping[str, np.ndarray]] = (), corpus: Mapping[str, np.ndarray] | None = None
                 ) -> tuple[Mapping[str, np.ndarray], list[Mapping[str, np.ndarray]], SpeechInput]:
    """The recipe's fusion's view of ``frames`` (``{utt id: [T, (L,) D]}``) and of its augmented
    ``copies`` (frame-masked by ``augment.frame_mask``), each speaker's clips standardised by the
    speaker's statistics (from the clean frames) when ``encoders.normalise`` is ``speaker``.
    ``corpus``: the frames whose statistics a group too small for its own gets (default:
    ``frames``; a benchmark that re-encodes test clips under a channel passes the clean ones, as
    the bundle stores them)."""
    from koemo.fusion.inputs import Moments, Normaliser, group_views
    from koemo.fusion.registry import speech_view
    from koemo.training.augment import masked_copies

    enc = recipe.encoders
    kind = speech_view(recipe.model)
    normaliser = None
    if enc.normalise != "none":
        moments = Moments.sum(Moments.of(a) for a in (frames if corpus is None else corpus).values())
        normaliser = Normaliser.fit(enc.normalise, moments, enc.normalise_min_clips)
    pool = enc.speech_pool if kind == "frames" else 1
    if pool < 1:
        raise KoemoError(f"encoders.speech_pool={pool} must be 1 (every frame) or more")
    layers = None if enc.speech_layers is None else [int(k) for k in enc.speech_layers]
    spec = SpeechInput(kind, enc.speech_layer, normaliser, pool, layers)
    copies = masked_copies(copies, recipe.augment.frame_mask, recipe.augment.seed)
    if normaliser is None and kind == "frames" and pool == 1 and layers is None:
        return frames, list(copies), spec
    speakers = {u.id: u.speaker or u.id for u in utts}
    views = group_views([frames, *copies], speakers, kind, normaliser, pool, layers)
    if normaliser is not None and recipe.augment.corpus_normalised:
        corpus_only = Normaliser("none", normaliser.corpus_mean, normaliser.corpus_sd)
        views += group_views([frames], speakers, kind, corpus_only, pool, layers)
    if normaliser is not None and recipe.augment.mixed_groups:
        views += group_views([frames], mixed_groups(speakers, recipe.augment.mixed_groups, recipe.augment.seed),
                             kind, normaliser, pool, layers)
    views = [{u: v.astype(np.float16) for u, v in table.items()} for table in views]
    return views[0], views[1:], spec
