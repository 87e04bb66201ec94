"""Upstream encoders (speech: frames; text: tokens or one vector) and the feature store.

    from koemo.encoders import get_speech_encoder, get_text_encoder, FeatureStore

Names: speech ``mfcc``, ``prosody`` (clip functionals), ``whisper-base-encoder``, ``hf-speech:<dir-or-hub-name>``; text
``embeddinggemma-300m``, ``e5-small``, ``fasttext-ko``, ``hf-text:<dir-or-hub-name>``.
Encoders are built once per (name, settings) and load their weights lazily on first use.
"""

from __future__ import annotations

from koemo.encoders.base import SPEECH_ENCODERS, TEXT_ENCODERS, SpeechEncoder, TextEncoder
from koemo.encoders import mfcc, prosody, whisper, hf, e5, fasttext  # noqa: E402,F401  (register)

__all__ = [
    "SPEECH_ENCODERS", "TEXT_ENCODERS", "SpeechEncoder", "TextEncoder", "FeatureStore",
    "get_speech_encoder", "get_text_encoder", "encoder_kind",
]

_INSTANCES: dict[tuple, object] = {}


def _key(kind: str, name: str, layer, extra) -> tuple:
    from koemo.paths import cache_root, models_dir

    return (kind, name, layer, tuple(sorted(extra.items())), str(cache_root()), str(models_dir()))


def _check_options(name: str, cls, options: dict) -> None:
    """A setting the encoder does not have (``encoders.speech_window`` for ``mfcc``) is a recipe
    error to name, not a TypeError from deep inside."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        from koemo.errors import KoemoError

        takes = [p for p in params if p not in ("self", "layer", "model")]
        raise KoemoError(f"speech encoder {name} has no setting {', '.join(unknown)} "
                         f"(its settings: {', '.join(takes) or 'none'})")


def get_speech_encoder(name: str, layer: int | None = None, **options) -> SpeechEncoder:
    """The speech encoder ``name`` (``hf-speech:<dir-or-name>`` for transformers models),
    built once per setting; ``layer=None`` is the last layer."""
    key = _key("speech", name, layer, options)
    if key not in _INSTANCES:
        if name.startswith("hf-speech:"):
            cls, args = SPEECH_ENCODERS.get("hf-speech"), (name[len("hf-speech:"):],)
        else:
            cls, args = SPEECH_ENCODERS.get(name), ()
        _check_options(name, cls, options)
        _INSTANCES[key] = cls(*args, layer=layer, **options)
    return _INSTANCES[key]  # type: ignore[return-value]


def get_text_encoder(name: str, layer: int | None = None, **options) -> TextEncoder:
    """The text encoder ``name`` (``hf-text:<dir-or-name>`` for transformers models)."""
    key = _key("text", name, layer, options)
    if key not in _INSTANCES:
        if name.startswith("hf-text:"):
            _INSTANCES[key] = TEXT_ENCODERS.get("hf-text")(name[len("hf-text:"):], layer=layer, **options)
        else:
            _INSTANCES[key] = TEXT_ENCODERS.get(name)(layer=layer, **options)
    return _INSTANCES[key]  # type: ignore[return-value]


def encoder_kind(name: str) -> str:
    """``speech`` or ``text`` for an encoder name (unknown names get the list of known ones)."""
    base = name.split(":", 1)[0] if ":" in name else name
    if base in SPEECH_ENCODERS:
        return "speech"
    if base in TEXT_ENCODERS:
        return "text"
    from koemo.errors import KoemoError

    known = ", ".join(SPEECH_ENCODERS.names() + TEXT_ENCODERS.names())
    raise KoemoError(f"unknown encoder '{name}'; known: {known} (hf-speech:/hf-text: take a dir or hub name)")


def __getattr__(name: str):
    if name == "FeatureStore":
        from koemo.encoders.store import FeatureStore

        return FeatureStore
    raise AttributeError(name)
