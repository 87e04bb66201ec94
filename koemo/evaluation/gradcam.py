"""How much of a decision each modality is responsible for: gradient x activation per modality
(the paper's Figure 6, "Grad-CAM on the fusion input").

The model is any callable ``model(audio, audio_mask, text, text_mask) -> logits`` with

- ``audio``: float tensor ``[B, Ta, Da]`` (speech-encoder frames), ``audio_mask``: ``[B, Ta]``,
- ``text``: float tensor ``[B, Tt, Dt]`` (text-encoder token vectors), ``text_mask``: ``[B, Tt]``,
- masks true (or 1) at real positions and false (0) at padding (the Hugging Face
  ``attention_mask`` convention),
- ``logits``: ``[B, C]``, one row per utterance, each row depending only on its own utterance
  (true of any model in ``eval()`` mode without cross-batch operations).

For each utterance the score of the target class (the predicted class by default, or the true
one) is differentiated with respect to each modality's activation ``X`` (the input tensors by
default, or the outputs of two named sub-modules, e.g. the fusion network's projection layers).
The modality's contribution is ``sum over real positions and features of |X * dScore/dX|``, and
the two contributions are normalised to shares that sum to 1. An utterance where both are exactly
zero (the score does not depend on either input) has no defined share: its shares are NaN and it is
left out of the per-label averages (counted in ``undefined``).

The absolute value is taken per element before summing, so evidence for and against the class
both count as "the decision depended on this modality"; without it, positive and negative
attributions inside one modality could cancel and a heavily used modality would look unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from koemo.errors import KoemoError

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MODALITIES = ("audio", "text")


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise KoemoError(f"layer output of type {type(output).__name__} holds no tensor")


def _masked_abs_sum(x: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``sum |x * grad|`` per batch row; positions where ``mask`` is false are left out when the
    activation has a time axis of the mask's length."""
    contrib = (x * grad).abs()
    if mask is not None and contrib.dim() >= 2 and contrib.shape[1] == mask.shape[1]:
        m = mask.to(contrib.dtype).reshape(mask.shape[0], mask.shape[1], *([1] * (contrib.dim() - 2)))
        contrib = contrib * m
    return contrib.reshape(contrib.shape[0], -1).sum(dim=1)


def modality_scores(
    model: Model,
    audio: torch.Tensor,
    audio_mask: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    target: str | torch.Tensor = "pred",
    layers: Mapping[str, str] | None = None,
    at: str = "input",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw (unnormalised) gradient x activation per modality.

    ``target``: ``"pred"`` (argmax of the logits) or a LongTensor ``[B]`` of class indices.
    ``layers``: ``{"audio": "name", "text": "name"}`` of sub-modules of ``model`` (an
    ``nn.Module``) whose outputs are used as the activations instead of the inputs.
    ``at="embed"``: for a model with ``embed(audio, audio_mask, text, text_mask) -> (a, t)`` and
    ``head(a, audio_mask, t, text_mask) -> logits`` (koemo's fusion models), the activations are
    ``a`` and ``t``, the per-modality fusion inputs: the paper's "Grad-CAM on the fusion input".

    Returns ``(audio_score [B], text_score [B], target_index [B], logits [B, C])``.
    """
    if audio.dim() not in (3, 4) or text.dim() != 3:
        raise KoemoError(f"audio must be [B, T, (L,) D] and text [B, T, D]; got {tuple(audio.shape)} and "
                         f"{tuple(text.shape)}")
    if audio.shape[0] != text.shape[0]:
        raise KoemoError(f"audio batch {audio.shape[0]} != text batch {text.shape[0]}")
    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        with torch.enable_grad():
            a = audio.detach().clone().float().requires_grad_(True)
            t = text.detach().clone().float().requires_grad_(True)
            if layers is not None:
                if not isinstance(model, torch.nn.Module):
                    raise KoemoError("layer-level contributions need an nn.Module model")
                modules = dict(model.named_modules())
                for modality in MODALITIES:
                    name = layers.get(modality)
                    if name not in modules:
                        raise KoemoError(f"model has no layer {name!r} for {modality}; "
                                         f"layers: {', '.join(n for n in modules if n)}")

                    def hook(_module, _inputs, output, modality=modality):
                        captured[modality] = _first_tensor(output)

                    handles.append(modules[name].register_forward_hook(hook))
            if at == "embed":
                if not (hasattr(model, "embed") and hasattr(model, "head")):
                    raise KoemoError("at='embed' needs a model with embed() and head() methods")
                if hasattr(model, "prepare"):  # a FusionModel: its own empty-row rule and frame pooling
                    a, audio_mask, t, text_mask = model.prepare(a, audio_mask, t, text_mask)
                else:
                    from koemo.fusion.base import fix_empty

                    audio_mask, text_mask = fix_empty(audio_mask), fix_empty(text_mask)
                ea, et = model.embed(a, audio_mask, t, text_mask)
                ea = ea.detach().requires_grad_(True)
                et = et.detach().requires_grad_(True)
                logits = model.head(ea, audio_mask, et, text_mask)
            elif at == "input":
                logits = model(a, audio_mask, t, text_mask)
            else:
                raise KoemoError(f"at must be 'input' or 'embed', got {at!r}")
            if logits.dim() != 2 or logits.shape[0] != audio.shape[0]:
                raise KoemoError(f"model returned logits of shape {tuple(logits.shape)}, expected [B, C]")
            if isinstance(target, str):
                if target != "pred":
                    raise KoemoError(f"target must be 'pred' or a tensor of class indices, got {target!r}")
                idx = logits.argmax(dim=1)
            else:
                idx = torch.as_tensor(target, dtype=torch.long).reshape(-1)
            # Summing the target scores over the batch gives each row's own gradient, because a
            # row's logits depend only on its own inputs. autograd.grad leaves parameter .grad alone.
            score = logits.gather(1, idx[:, None]).sum()
            if at == "embed":
                xs = [ea, et]
            elif layers is None:
                xs = [a, t]
            else:
                missing = [m for m in MODALITIES if m not in captured]
                if missing:
                    raise KoemoError(f"layer {layers[missing[0]]!r} was not called in the forward pass")
                xs = [captured[m] for m in MODALITIES]
            wanted = [x for x in xs if x.requires_grad]
            grads = iter(torch.autograd.grad(score, wanted, allow_unused=True) if wanted else [])
            acts = {m: (x, next(grads) if x.requires_grad else None) for m, x in zip(MODALITIES, xs)}
            scores = {}
            for m, mask in (("audio", audio_mask), ("text", text_mask)):
                x, g = acts[m]
                if g is None:  # the score does not depend on this modality at all
                    scores[m] = torch.zeros(audio.shape[0])
                else:
                    scores[m] = _masked_abs_sum(x.detach(), g.detach(), mask).cpu()
    finally:
        for h in handles:
            h.remove()
        if was_training and hasattr(model, "train"):
            model.train()
    return scores["audio"], scores["text"], idx.detach().cpu(), logits.detach().cpu()


def shares(audio_score: torch.Tensor | np.ndarray, text_score: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[B, 2]`` (audio share, text share), rows summing to 1; NaN where both scores are 0."""
    a = np.asarray(audio_score, dtype=np.float64)
    t = np.asarray(text_score, dtype=np.float64)
    total = a + t
    out = np.full((a.shape[0], 2), np.nan)
    ok = total > 0
    out[ok, 0] = a[ok] / total[ok]
    out[ok, 1] = t[ok] / total[ok]
    return out


@dataclass
class ModalityContribution:
    """Per-utterance shares and their per-label means (by true label, as in the paper's Figure 6)."""

    labels: list[str]
    shares: np.ndarray  # [N, 2] audio, text
    true: np.ndarray  # [N] true label index (-1 unknown)
    target: np.ndarray  # [N] class index whose score was explained
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    undefined: int = 0

    def to_dict(self) -> dict:
        return {"labels": self.labels, "per_label": self.per_label, "overall": self.overall,
                "undefined": self.undefined, "n": int(self.shares.shape[0])}


def per_label_means(
    share: np.ndarray, label_index: np.ndarray, labels: Sequence[str]
) -> tuple[dict[str, dict[str, float]], dict[str, float], int]:
    """Average the defined shares per label: ``{label: {"audio", "text", "n"}}``, overall, #undefined."""
    share = np.asarray(share, dtype=np.float64)
    label_index = np.asarray(label_index)
    defined = ~np.isnan(share).any(axis=1)
    per = {}
    for i, label in enumerate(labels):
        sel = defined & (label_index == i)
        if sel.any():
            per[label] = {"audio": float(share[sel, 0].mean()), "text": float(share[sel, 1].mean()),
                          "n": int(sel.sum())}
    overall = ({"audio": float(share[defined, 0].mean()), "text": float(share[defined, 1].mean()),
                "n": int(defined.sum())} if defined.any() else {})
    return per, overall, int((~defined).sum())


def modality_contribution(
    model: Model,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    labels: Sequence[str],
    target: str = "pred",
    layers: Mapping[str, str] | None = None,
    at: str = "input",
) -> ModalityContribution:
    """Shares over a data set given as batches ``(audio, audio_mask, text, text_mask, y)`` with
    ``y`` the true class indices; averaged per true label.

    ``target="pred"`` explains the predicted class, ``target="true"`` the true class.
    """
    if target not in ("pred", "true"):
        raise KoemoError(f"target must be 'pred' or 'true', got {target!r}")
    all_shares, all_true, all_target = [], [], []
    for audio, audio_mask, text, text_mask, y in batches:
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
        a, t, idx, _ = modality_scores(
            model, audio, audio_mask, text, text_mask, target="pred" if target == "pred" else y, layers=layers,
            at=at,
        )
        all_shares.append(shares(a, t))
        all_true.append(y.numpy())
        all_target.append(idx.numpy())
    if not all_shares:
        raise KoemoError("no batches to explain")
    share = np.concatenate(all_shares)
    true = np.concatenate(all_true)
    per, overall, undefined = per_label_means(share, true, labels)
    return ModalityContribution(list(labels), share, true, np.concatenate(all_target), per, overall, undefined)
