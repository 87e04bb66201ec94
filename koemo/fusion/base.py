"""Shared pieces of the fusion networks: masking helpers, the two-stage forward, Grad-CAM input.

Every fusion model is a :class:`FusionModel`. Its forward is split in two so that the
*fusion input activations* can be inspected (Grad-CAM modality contribution, Figure 6 of the paper):

- ``embed(audio, audio_mask, text, text_mask) -> (a, t)``: the per-modality activations that
  enter the fusion (after the model's own per-modality projection, e.g. the kernel-3 conv;
  the raw encoder vectors for ``shallow``);
- ``head(a, audio_mask, t, text_mask) -> logits``: everything after.

``forward`` is ``head(*embed(...))``. :func:`grad_x_activation` runs the two stages, backpropagates
the chosen class logit to ``a`` and ``t`` and sums gradient x activation over valid positions,
per modality.

Shapes: audio ``[B, Ta, Da]`` with ``audio_mask [B, Ta]`` (True = a real frame), text
``[B, Tt, Dt]`` with ``text_mask [B, Tt]``. A sentence-vector text encoder gives ``[B, 1, Dt]``.
Padding never changes a result: padded positions are zeroed before convolutions, excluded from
attention keys and from pooling.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from koemo.errors import KoemoError


def fix_empty(mask: torch.Tensor) -> torch.Tensor:
    """A row with no valid position gets its first position marked valid (a zero vector there).

    Attention over zero keys is undefined (NaN); an empty ASR transcript must still give an answer.
    """
    mask = mask.bool()
    first = torch.zeros_like(mask)
    first[:, :1] = True
    # no branch on the data: the folds trained together (torch.func.vmap) run this too
    return mask | (first & ~mask.any(dim=1, keepdim=True))


def reads_text_means(model) -> bool:
    """Does ``model`` (a fusion, its class, or an end-to-end module holding one as ``.fusion``)
    read only the mean text vector (:attr:`FusionModel.text_mean_only`)? Batches for it may then
    carry each clip's mean instead of every token's."""
    return bool(getattr(getattr(model, "fusion", model), "text_mean_only", False))


def speech_mean_window(model) -> int:
    """For a head that reads only the mean of its pooled speech windows
    (:attr:`FusionModel.speech_mean_only`): the frames a window averages (``audio_pool``), so that
    batches may carry each clip's mean of its windows instead of its frames (the model's
    standardisation and layer mix are linear, so it gives the same logits). 0: it reads the
    frames (every other head, and an end-to-end module, whose speech input is the encoder's)."""
    if not getattr(model, "speech_mean_only", False):
        return 0
    return max(1, int(getattr(model, "audio_pool", 1)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of ``x [B, T, D]`` counting only ``mask [B, T]`` positions."""
    if x.shape[1] == 1:  # one vector a clip (pooled statistics, a mean text vector): the same values, two passes fewer
        return x[:, 0] * mask.to(x.dtype)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def pool_frames(x: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``x [B, T, D]`` over non-overlapping windows of ``stride`` frames, counting only
    valid frames; a window is valid if any of its frames is.

    Whisper gives 50 frames/s; attention over ~300 frames per clip dominates training time on a CPU,
    and emotion cues live at syllable scale (~200 ms), so pooling 4 frames (80 ms) should cost little
    accuracy (to be measured per recipe: docs/training.md). Windows start
    at frame 0, so padding after the last valid frame never changes the pooled valid windows.
    """
    if stride <= 1:
        return x, mask
    b, t, d = x.shape
    pad = (-t) % stride
    m = mask.to(x.dtype)
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        m = torch.nn.functional.pad(m, (0, pad))
    windows = x.shape[1] // stride
    pooled = masked_mean(x.reshape(b * windows, stride, d), m.reshape(b * windows, stride))
    return pooled.reshape(b, windows, d), m.reshape(b, windows, stride).any(dim=2)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x * mask.to(x.dtype).unsqueeze(-1)


class MaskedConv1d(nn.Module):
    """Kernel-3 1-D convolution over time on ``[B, T, D]`` that ignores padding.

    Padded frames are zeroed first, so the frame next to the padding sees exactly the zero
    padding it would see in an unpadded sequence; outputs at padded positions are zeroed.
    """

    def __init__(self, d_in: int, d_out: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(d_in, d_out, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = zero_padding(x, mask)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return zero_padding(y, mask)


def encoder_layer(hidden: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        hidden, heads, dim_feedforward=4 * hidden, dropout=dropout, batch_first=True,
        activation="gelu",
    )


class SelfAttentionStack(nn.Module):
    """``layers`` transformer encoder layers with a key-padding mask."""

    def __init__(self, hidden: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(encoder_layer(hidden, heads, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
            x = zero_padding(x, mask)
        return x


class LayerMix(nn.Module):
    """A learned softmax-weighted sum over the layer axis of ``[B, T, L, D]`` speech inputs
    (SUPERB's weighted sum of hidden states), uniform at initialisation."""

    def __init__(self, layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("btld,l->btd", x, torch.softmax(self.weights, dim=0).to(x.dtype))


class LayerConcat(nn.Module):
    """``[B, T, L, D]`` -> ``[B, T, L * D]``: every layer side by side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:2], -1)


LAYER_MIXES = ("weighted", "concat")


class FusionModel(nn.Module):
    """Base class: ``forward = head(*embed(...))``; see the module docstring.

    ``audio_layers`` > 1: the speech input has a layer axis ``[B, T, L, D]`` that a
    :class:`LayerMix` sums first. ``standardise``: the inputs are standardised per feature with
    statistics of the training data (:meth:`fit_standardiser`, kept as buffers, so a bundle
    carries them).
    """

    #: which modalities the model reads ("audio", "text")
    modalities: tuple[str, ...] = ("audio", "text")
    #: speech frames averaged per step before the model sees them (``model.audio_pool``)
    audio_pool: int = 1
    #: the head reads the speech only through the mean of its pooled frames (shallow, linear):
    #: batches may carry that mean (:func:`speech_mean_window`)
    speech_mean_only: bool = False
    #: what the head reads of the speech frames (:mod:`koemo.fusion.inputs`): frames or stats
    speech_view: str = "frames"
    #: a pooled head: ``model.pooling: stats`` makes it read clip statistics
    pooled: bool = False
    #: the head reads only the masked mean of the text vectors: :meth:`prepare` averages them
    #: first (standardising the mean equals averaging the standardised vectors, and a training
    #: step then touches one vector per clip instead of every token's)
    text_mean_only: bool = False

    def __init__(self, audio_dim: int, text_dim: int, n_labels: int, hidden: int = 768,
                 heads: int = 8, layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.audio_dim, self.text_dim, self.n_labels = audio_dim, text_dim, n_labels
        self.hidden, self.heads, self.layers, self.dropout_p = hidden, heads, layers, dropout
        self.audio_layers = 1
        self.input_audio_dim = audio_dim
        self.layer_mix: nn.Module | None = None
        self.layer_mix_kind = "weighted"
        self.standardised = False

    def configure_inputs(self, audio_layers: int = 1, standardise: bool = False, layer_mix: str = "weighted",
                         input_dim: int | None = None) -> None:
        """Set up the input stage: the layers' combination (``weighted``: a learned weighted sum;
        ``concat``: side by side, ``audio_dim`` = layers x ``input_dim``) and the standardisation
        buffers (identity until fitted). ``input_dim``: one layer's size (default ``audio_dim``)."""
        if layer_mix not in LAYER_MIXES:
            raise KoemoError(f"model.layer_mix={layer_mix!r}: use one of {', '.join(LAYER_MIXES)}")
        self.input_audio_dim = int(input_dim or self.audio_dim)
        self.audio_layers = int(audio_layers)
        self.layer_mix_kind = layer_mix
        self.layer_mix = None
        if audio_layers > 1:
            self.layer_mix = LayerMix(audio_layers) if layer_mix == "weighted" else LayerConcat()
        self.standardised = bool(standardise)
        if standardise:
            a_shape = (audio_layers, self.input_audio_dim) if audio_layers > 1 else (self.input_audio_dim,)
            self.register_buffer("audio_mean", torch.zeros(a_shape))
            self.register_buffer("audio_sd", torch.ones(a_shape))
            self.register_buffer("text_mean", torch.zeros(self.text_dim))
            self.register_buffer("text_sd", torch.ones(self.text_dim))

    @torch.no_grad()
    def fit_standardiser(self, audio: list, text: list) -> None:
        """Per-feature mean and sd over every valid position of the training inputs (arrays
        ``[T, (L,) D]`` and ``[T, D]``)."""
        if not self.standardised:
            return
        for name, arrays in (("audio", audio), ("text", text)):
            x = torch.cat([torch.tensor(np.asarray(a), dtype=torch.float32).reshape(-1, *getattr(self, f"{name}_mean").shape)
                           for a in arrays])
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            getattr(self, f"{name}_sd").copy_(x.std(0, unbiased=False).clamp_min(1e-4))

    def embed(self, audio, audio_mask, text, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def head(self, a, audio_mask, t, text_mask) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, audio, audio_mask, text, text_mask):
        """What every entry point does before ``embed``: inputs standardised, layers mixed, empty
        rows fixed, speech frames pooled. Returns (audio, audio_mask, text, text_mask)."""
        return (*self.prepare_speech(audio, audio_mask), *self.prepare_text(text, text_mask))

    def prepare_speech(self, audio, audio_mask):
        """:meth:`prepare`'s speech half: standardised, layers mixed, frames pooled."""
        if self.standardised:
            audio = (audio - self.audio_mean) / self.audio_sd
        if self.layer_mix is not None:
            audio = self.layer_mix(audio)
        return pool_frames(audio, fix_empty(audio_mask), self.audio_pool)

    def prepare_text(self, text, text_mask):
        """:meth:`prepare`'s text half: averaged first for a head that reads the mean only,
        standardised, empty rows fixed."""
        if self.text_mean_only and text.shape[1] != 1:
            text_mask = fix_empty(text_mask)
            text = masked_mean(text, text_mask).unsqueeze(1)
            text_mask = torch.ones_like(text_mask[:, :1])
        if self.standardised:
            text = (text - self.text_mean) / self.text_sd
        return text, fix_empty(text_mask)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        audio, audio_mask, text, text_mask = self.prepare(audio, audio_mask, text, text_mask)
        a, t = self.embed(audio, audio_mask, text, text_mask)
        return self.head(a, audio_mask, t, text_mask)


def grad_x_activation(model: FusionModel, audio, audio_mask, text, text_mask,
                      target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM-style modality contribution at the fusion input.

    Returns ``(scores [B, 2], logits [B, C])``: column 0 is the sum over valid audio positions
    and channels of d logit[target] / d a * a, column 1 the same for text (0 for a modality the
    model does not read). ``target`` defaults to the predicted class. Shares per modality are
    e.g. ``relu(scores) / relu(scores).sum(1, keepdim=True)``.
    """
    audio, audio_mask, text, text_mask = model.prepare(audio, audio_mask, text, text_mask)
    with torch.enable_grad():
        a, t = model.embed(audio, audio_mask, text, text_mask)
        a = a.detach().requires_grad_(True)
        t = t.detach().requires_grad_(True)
        logits = model.head(a, audio_mask, t, text_mask)
        if target is None:
            target = logits.argmax(dim=1)
        chosen = logits.gather(1, target.view(-1, 1)).sum()
        ga, gt = torch.autograd.grad(chosen, (a, t), allow_unused=True)
    scores = []
    for act, grad, mask in ((a, ga, audio_mask), (t, gt, text_mask)):
        if grad is None:
            scores.append(torch.zeros(act.shape[0]))
        else:
            scores.append((grad * act * mask.unsqueeze(-1).to(act.dtype)).sum(dim=(1, 2)))
    return torch.stack(scores, dim=1).detach(), logits.detach()
