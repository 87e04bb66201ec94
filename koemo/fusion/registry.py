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


def build_fusion(name: str, audio_dim: int, text_dim: int, n_labels: int, hidden: int = 768,
                 heads: int = 8, layers: int = 1, dropout: float = 0.1, audio_pool: int = 1,
                 options: Mapping[str, Any] | None = None) -> FusionModel:
    """Instantiate a registered fusion model, checking that ``heads`` divides ``hidden`` and that
    every option is one the fusion takes."""
    FUSIONS.get(name)
    if hidden % heads:
        raise KoemoError(f"model.hidden={hidden} must be divisible by model.heads={heads}")
    if audio_pool < 1:
        raise KoemoError(f"model.audio_pool={audio_pool} must be 1 (no pooling) or more")
    model = FUSIONS.build(name, audio_dim, text_dim, n_labels, hidden=hidden, heads=heads, layers=layers,
                          dropout=dropout, options=options, where="model.options")
    model.audio_pool = int(audio_pool)
    return model


def build_from_config(model: ModelConfig, audio_dim: int, text_dim: int, n_labels: int) -> FusionModel:
    """The recipe's (or a bundle's) ``model`` section, for inputs of these sizes."""
    return build_fusion(model.fusion, audio_dim, text_dim, n_labels, hidden=model.hidden, heads=model.heads,
                        layers=model.layers, dropout=model.dropout, audio_pool=model.audio_pool,
                        options=model.options)
