"""The fusion networks of the paper (Figure 5) and the single-modal baselines.

=====================  =====================================================================
``audio-only``         Wu et al. 2021: kernel-3 conv to ``hidden``, one transformer layer,
                       masked mean-pool, linear classifier; reads audio only
``text-only``          the same on the text vectors only
``shallow``            Siriwardhana et al. 2020: masked mean-pool each modality, concatenate,
                       an MLP (``hidden`` units) classifies
``fusion-transformer`` Khan et al. 2020: kernel-3 conv maps each modality to ``hidden``, add a
                       learned modality embedding, concatenate along time, one self-attention
                       layer over both, masked mean-pool each modality's positions,
                       concatenate, classify
``linear``             the linear probe: one linear layer on the pooled speech statistics and
                       the mean text vector (logistic regression; the baseline row)
``mult``               Tsai et al. 2019 (one layer): kernel-3 conv to ``hidden``; audio queries
                       text and text queries audio (cross-modal attention + feed-forward,
                       residual, layer norm), masked mean-pool each, concatenate, classify
=====================  =====================================================================
"""

from __future__ import annotations

import torch
from torch import nn

from koemo.fusion.base import (
    FusionModel,
    MaskedConv1d,
    SelfAttentionStack,
    masked_mean,
    zero_padding,
)
from koemo.fusion.registry import FUSIONS


class _SingleModal(FusionModel):
    modality = "audio"

    def __init__(self, audio_dim, text_dim, n_labels, hidden=768, heads=8, layers=1, dropout=0.1):
        super().__init__(audio_dim, text_dim, n_labels, hidden, heads, layers, dropout)
        self.modalities = (self.modality,)
        d_in = audio_dim if self.modality == "audio" else text_dim
        self.proj = MaskedConv1d(d_in, hidden)
        self.act = nn.ReLU()
        self.encoder = SelfAttentionStack(hidden, heads, layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, n_labels)

    def embed(self, audio, audio_mask, text, text_mask):
        if self.modality == "audio":
            return self.proj(audio, audio_mask), text
        return audio, self.proj(text, text_mask)

    def head(self, a, audio_mask, t, text_mask):
        x, mask = (a, audio_mask) if self.modality == "audio" else (t, text_mask)
        x = zero_padding(self.act(x), mask)
        x = self.encoder(x, mask)
        return self.classifier(self.drop(masked_mean(x, mask)))


@FUSIONS.register("audio-only")
class AudioOnly(_SingleModal):
    modality = "audio"


@FUSIONS.register("text-only")
class TextOnly(_SingleModal):
    modality = "text"


@FUSIONS.register("shallow")
class ShallowFusion(FusionModel):
    """``model.pooling``: ``mean`` (the paper's: masked mean of the frames) or ``stats``
    (statistics pooling: the clip's mean and standard deviation, computed once per clip by
    :mod:`koemo.fusion.inputs`, so ``audio_dim`` is twice the encoder's)."""

    pooled = True
    text_mean_only = True
    speech_mean_only = True

    def __init__(self, audio_dim, text_dim, n_labels, hidden=768, heads=8, layers=1, dropout=0.1):
        super().__init__(audio_dim, text_dim, n_labels, hidden, heads, layers, dropout)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(audio_dim + text_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_labels),
        )

    def embed(self, audio, audio_mask, text, text_mask):
        return audio, text

    def head(self, a, audio_mask, t, text_mask):
        pooled = torch.cat([masked_mean(a, audio_mask), masked_mean(t, text_mask)], dim=1)
        return self.classifier(pooled)


@FUSIONS.register("linear")
class LinearProbe(FusionModel):
    """The baseline everyone can check: one linear layer (multinomial logistic regression, with
    the trainer's weight decay as its L2 penalty) on the pooled speech statistics and the mean
    text vector, the same features the pooled heads read."""

    speech_view = "stats"
    text_mean_only = True
    speech_mean_only = True

    def __init__(self, audio_dim, text_dim, n_labels, hidden=768, heads=8, layers=1, dropout=0.1):
        super().__init__(audio_dim, text_dim, n_labels, hidden, heads, layers, dropout)
        self.classifier = nn.Linear(audio_dim + text_dim, n_labels)

    def embed(self, audio, audio_mask, text, text_mask):
        return audio, text

    def head(self, a, audio_mask, t, text_mask):
        return self.classifier(torch.cat([masked_mean(a, audio_mask), masked_mean(t, text_mask)], dim=1))

    def forward_paths(self, audio, audio_mask, texts, text_masks):
        """:meth:`forward` of one speech input beside ``P`` texts (``texts [P, B, T, D]``): logits
        ``[P, B, C]``. The layer is a sum of a speech part and a text part, so the speech part is
        computed once for every text: consistency regularization's golden and STT paths share
        the clip (koemo.training.stacked), and the speech statistics are nine tenths of the input."""
        a, a_mask = self.prepare_speech(audio, audio_mask)
        speech = masked_mean(a, a_mask)
        w, d = self.classifier.weight, speech.shape[-1]
        base = speech @ w[:, :d].T + self.classifier.bias
        out = []
        for text, mask in zip(texts.unbind(0), text_masks.unbind(0)):
            t, t_mask = self.prepare_text(text, mask)
            out.append(base + masked_mean(t, t_mask) @ w[:, d:].T)
        return torch.stack(out)


@FUSIONS.register("fusion-transformer")
class FusionTransformer(FusionModel):
    def __init__(self, audio_dim, text_dim, n_labels, hidden=768, heads=8, layers=1, dropout=0.1):
        super().__init__(audio_dim, text_dim, n_labels, hidden, heads, layers, dropout)
        self.audio_proj = MaskedConv1d(audio_dim, hidden)
        self.text_proj = MaskedConv1d(text_dim, hidden)
        self.modality_embedding = nn.Embedding(2, hidden)
        self.encoder = SelfAttentionStack(hidden, heads, layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden, n_labels)

    def embed(self, audio, audio_mask, text, text_mask):
        return self.audio_proj(audio, audio_mask), self.text_proj(text, text_mask)

    def head(self, a, audio_mask, t, text_mask):
        a = a + self.modality_embedding.weight[0]
        t = t + self.modality_embedding.weight[1]
        x = torch.cat([a, t], dim=1)
        mask = torch.cat([audio_mask, text_mask], dim=1)
        x = self.encoder(zero_padding(x, mask), mask)
        # Pool each modality's positions separately: one mean over the joint sequence would give
        # ~20 text tokens a ~6% weight against ~300 audio frames.
        n_audio = a.shape[1]
        pooled = torch.cat([masked_mean(x[:, :n_audio], audio_mask), masked_mean(x[:, n_audio:], text_mask)], dim=1)
        return self.classifier(self.drop(pooled))


class CrossModalLayer(nn.Module):
    """One MulT cross-modal block: queries from one modality, keys/values from the other."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * hidden, hidden)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, q, q_mask, kv, kv_mask):
        out, _ = self.attn(q, kv, kv, key_padding_mask=~kv_mask, need_weights=False)
        x = self.norm1(q + self.drop(out))
        x = self.norm2(x + self.drop(self.ff(x)))
        return zero_padding(x, q_mask)


@FUSIONS.register("mult")
class MulT(FusionModel):
    def __init__(self, audio_dim, text_dim, n_labels, hidden=768, heads=8, layers=1, dropout=0.1):
        super().__init__(audio_dim, text_dim, n_labels, hidden, heads, layers, dropout)
        self.audio_proj = MaskedConv1d(audio_dim, hidden)
        self.text_proj = MaskedConv1d(text_dim, hidden)
        self.a2t = nn.ModuleList(CrossModalLayer(hidden, heads, dropout) for _ in range(layers))
        self.t2a = nn.ModuleList(CrossModalLayer(hidden, heads, dropout) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden, n_labels)

    def embed(self, audio, audio_mask, text, text_mask):
        return self.audio_proj(audio, audio_mask), self.text_proj(text, text_mask)

    def head(self, a, audio_mask, t, text_mask):
        for a2t, t2a in zip(self.a2t, self.t2a):
            # audio attends to text (query audio) and text attends to audio (query text)
            a, t = a2t(a, audio_mask, t, text_mask), t2a(t, text_mask, a, audio_mask)
        pooled = torch.cat([masked_mean(a, audio_mask), masked_mean(t, text_mask)], dim=1)
        return self.classifier(self.drop(pooled))
