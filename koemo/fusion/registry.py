"""The fusion registry and the one place a model is built from its settings.

``FUSIONS`` maps a name to a :class:`~koemo.fusion.base.FusionModel` subclass (checked when it
registers). Settings every fusion shares (``hidden``, ``heads``, ``layers``, ``dropout``,
``audio_pool``) are fields of :class:`koemo.config.ModelConfig`; what only one fusion has is a
keyword-only parameter of its class, set from a recipe's ``model.options`` mapping. The trainer,
the bundle reader and end-to-end training all call :func:`build_from_config`.
"""

from __future__ import annotations

from typing import Any, Mapping

from koemo.config import ModelConfig
from koemo.errors import KoemoError
from koemo.fusion.base import FusionModel
from koemo.registry import Registry

FUSIONS: Registry[type[FusionModel]] = Registry("fusion model", FusionModel)
POOLINGS = ("mean", "stats")


def build_fusion(name: str, audio_dim: int, text_dim: int, n_labels: int, hidden: int = 768,
                 heads: int = 8, layers: int = 1, dropout: float = 0.1, audio_pool: int = 1,
                 options: Mapping[str, Any] | None = None, audio_layers: int = 1,
                 standardise: bool = False, layer_mix: str = "weighted", pooling: str = "mean") -> FusionModel:
    """Instantiate a registered fusion model, checking that ``heads`` divides ``hidden`` and that
    every option is one the fusion takes; ``audio_layers`` > 1 adds the layers' mix,
    ``standardise`` the input standardisation buffers; ``pooling="stats"`` makes a pooled head
    read clip statistics (``audio_dim`` is then the statistics' size, as the data gives it)."""
    if pooling not in POOLINGS:
        raise KoemoError(f"model.pooling={pooling!r}: use one of {', '.join(POOLINGS)}")
    cls = FUSIONS.get(name)
    if hidden % heads:
        raise KoemoError(f"model.hidden={hidden} must be divisible by model.heads={heads}")
    if audio_pool < 1:
        raise KoemoError(f"model.audio_pool={audio_pool} must be 1 (no pooling) or more")
    model_dim = audio_dim * audio_layers if layer_mix == "concat" and audio_layers > 1 else audio_dim
    model = FUSIONS.build(name, model_dim, text_dim, n_labels, hidden=hidden, heads=heads, layers=layers,
                          dropout=dropout, options=options, where="model.options")
    model.audio_pool = int(audio_pool)
    if cls.pooled and pooling == "stats":
        model.speech_view = "stats"
    model.configure_inputs(audio_layers, standardise, layer_mix, input_dim=audio_dim)
    return model


def build_from_config(model: ModelConfig, audio_dim: int, text_dim: int, n_labels: int,
                      audio_layers: int = 1) -> FusionModel:
    """The recipe's (or a bundle's) ``model`` section, for inputs of these sizes."""
    return build_fusion(model.fusion, audio_dim, text_dim, n_labels, hidden=model.hidden, heads=model.heads,
                        layers=model.layers, dropout=model.dropout, audio_pool=model.audio_pool,
                        options=model.options, audio_layers=audio_layers, standardise=model.standardise,
                        layer_mix=model.layer_mix, pooling=model.pooling)


def speech_view(model: ModelConfig) -> str:
    """What the configured fusion reads of the speech frames (``frames`` or ``stats``), known
    before the model is built (its input is made for it)."""
    cls = FUSIONS.get(model.fusion)
    if cls.pooled and model.pooling == "stats":
        return "stats"
    return cls.speech_view
