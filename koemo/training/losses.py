"""Cross-entropy and consistency regularization (Kim & Kang 2021, equations 1-3).

For one utterance, the golden path gives ``p_gold = f(A(x), T(t))`` (human transcript) and the
STT path ``p_stt = f(A(x), T(t'))`` (ASR transcript). The objective is

    L = CE(p_<ce_path>, y) + lambda * KL(direction)

with the variants the paper and the authors' script disagree on:

- ``ce_path``: ``gold`` (the paper's text, eq. 2) or ``stt`` (the authors' training script);
- ``kl``: ``"gold||stt"`` = KL(p_gold || p_stt) or ``"stt||gold"`` = KL(p_stt || p_gold);
- ``detach_target``: stop the KL term's gradient through the golden path (the reference the
  STT path is pulled towards); the golden path then learns only from its cross-entropy;
- ``lam``: lambda.

koemo's default is CE on gold, KL(p_gold || p_stt), golden path detached, lambda 1 (see
docs/training.md for why).

Batch losses are *sums* over examples; the trainer divides by the size of the optimisation
batch, so gradient accumulation and data-parallel shards add up to exactly the full-batch mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from koemo.errors import KoemoError

CE_PATHS = ("gold", "stt")
KL_DIRECTIONS = ("gold||stt", "stt||gold")


@dataclass(frozen=True)
class CRVariant:
    lam: float = 1.0
    ce_path: str = "gold"
    kl: str = "gold||stt"
    detach_target: bool = True

    def __post_init__(self):
        if self.ce_path not in CE_PATHS:
            raise KoemoError(f"train.cr_ce_path must be one of {', '.join(CE_PATHS)}, got {self.ce_path!r}")
        if self.kl not in KL_DIRECTIONS:
            raise KoemoError(f"train.cr_kl must be one of {', '.join(KL_DIRECTIONS)}, got {self.kl!r}")
        if self.lam < 0:
            raise KoemoError(f"train.cr_lambda must be >= 0, got {self.lam}")


def ce_per_example(logits: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Optionally class-weighted) cross-entropy of each example. ``class_weight``: ``[C]``, or
    ``[N, C]`` with one row per example (folds trained together, each with its own weights)."""
    per = F.cross_entropy(logits, y, reduction="none")
    if class_weight is None:
        return per
    if class_weight.dim() == 1:
        return per * class_weight[y]
    return per * class_weight.gather(1, y.unsqueeze(1)).squeeze(1)


def ce_sum(logits: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the batch of (optionally class-weighted) cross-entropy."""
    return ce_per_example(logits, y, class_weight).sum()


def kl_per_example(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each example, with p, q the softmax of the logits."""
    log_p = F.log_softmax(logits_p, dim=-1)
    log_q = F.log_softmax(logits_q, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def kl_sum(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of KL(p || q) with p, q the softmax of the logits."""
    return kl_per_example(logits_p, logits_q).sum()


def cr_per_example(
    logits_gold: torch.Tensor,
    logits_stt: torch.Tensor,
    y: torch.Tensor,
    variant: CRVariant = CRVariant(),
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the objective for each example: ``(CE, KL)``; the loss is
    ``CE + variant.lam * KL``."""
    ce_logits = logits_gold if variant.ce_path == "gold" else logits_stt
    ce = ce_per_example(ce_logits, y, class_weight)
    gold = logits_gold.detach() if variant.detach_target else logits_gold
    kl = kl_per_example(gold, logits_stt) if variant.kl == "gold||stt" else kl_per_example(logits_stt, gold)
    return ce, kl


def cr_sum(
    logits_gold: torch.Tensor,
    logits_stt: torch.Tensor,
    y: torch.Tensor,
    variant: CRVariant = CRVariant(),
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE + lambda * KL`` summed over the batch, and its parts (as floats) for logging."""
    ce, kl = (t.sum() for t in cr_per_example(logits_gold, logits_stt, y, variant, class_weight))
    total = ce + variant.lam * kl
    return total, {"ce": float(ce.detach()), "kl": float(kl.detach())}


def class_weights(labels: list[int], n_labels: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over the training examples
    (sklearn's ``class_weight="balanced"``); a class absent from training gets weight 0."""
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=n_labels).double()
    w = torch.where(counts > 0, len(labels) / (n_labels * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.float()
