"""Assemble a :class:`~koemo.serving.predictor.Predictor` from real components: an ASR backend,
the speech and text encoders, and a fusion network (from a trained model bundle).

The same encoder and fusion code that training uses runs here; nothing is re-implemented.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from koemo.errors import KoemoError
from koemo.serving.limits import Limits
from koemo.serving.predictor import Predictor, default_bundle_dir


def fusion_classifier(model, contribution: bool = True):
    """``(frames [T, Da], tokens [T, Dt]) -> (probabilities, {"audio", "text"} shares)`` for a
    :class:`koemo.fusion.FusionModel`.

    The shares are gradient x activation at the fusion input (the paper's Grad-CAM modality
    contribution, :func:`koemo.evaluation.gradcam.modality_scores` with ``at="embed"``), computed in
    the same forward pass that gives the logits.
    """
    import torch

    model.eval()

    def classify(speech: np.ndarray, text: np.ndarray):
        a = torch.from_numpy(np.asarray(speech, dtype=np.float32))[None]
        t = torch.from_numpy(np.asarray(text, dtype=np.float32))[None]
        a_mask = torch.ones(a.shape[:2], dtype=torch.bool)
        t_mask = torch.ones(t.shape[:2], dtype=torch.bool)
        if contribution:
            from koemo.evaluation.gradcam import modality_scores, shares

            a_score, t_score, _idx, logits = modality_scores(model, a, a_mask, t, t_mask, at="embed")
            share = shares(a_score, t_score)[0]
            contrib = None if np.isnan(share).any() else {"audio": float(share[0]), "text": float(share[1])}
        else:
            with torch.inference_mode():
                logits = model(a, a_mask, t, t_mask)
            contrib = None
        probs = torch.softmax(logits.double(), dim=-1)[0].numpy()
        return probs, contrib

    return classify


def predictor_from_parts(
    labels: Sequence[str],
    asr,
    speech_encoder,
    text_encoder,
    fusion,
    *,
    info: dict[str, Any] | None = None,
    limits: Limits | None = None,
    contribution: bool = True,
) -> Predictor:
    """A predictor from loaded parts: ``asr.transcribe``, ``speech_encoder.encode(audio)``,
    ``text_encoder.encode([text])`` and a fusion ``nn.Module``."""
    described = {
        "asr": getattr(asr, "name", type(asr).__name__),
        "encoders": {
            "speech": {"name": getattr(speech_encoder, "name", ""), "id": _safe_id(speech_encoder)},
            "text": {"name": getattr(text_encoder, "name", ""), "id": _safe_id(text_encoder)},
        },
        "fusion": getattr(fusion, "registry_name", type(fusion).__name__),
    }
    described.update(info or {})
    return Predictor(
        labels=tuple(labels),
        asr=asr,
        speech_encoder=speech_encoder.encode,
        text_encoder=lambda text: text_encoder.encode([text])[0],
        classify=fusion_classifier(fusion, contribution=contribution),
        info=described,
        limits=limits or Limits(),
    )


def _safe_id(encoder) -> str:
    try:
        return str(encoder.id)
    except Exception:  # noqa: BLE001 - an id is informative only
        return ""


def load_predictor(path: str | Path | None, *, asr: str | None = None, limits: Limits) -> Predictor:
    """Load the model bundle at ``path`` (default: :func:`default_bundle_dir`) with its encoders."""
    explicit = path is not None
    path = Path(path).expanduser() if explicit else default_bundle_dir()
    if not path.exists():
        if explicit:
            raise KoemoError(f"{path}: model bundle not found")
        raise KoemoError(
            f"no trained model at {path} (the default); run `make demo` to train one, "
            "or pass --model BUNDLE_DIR"
        )
    if not path.is_dir():
        raise KoemoError(f"{path}: not a model bundle (a bundle is a directory)")
    raise KoemoError(f"{path}: loading model bundles is not available yet (koemo.training bundles pending)")
