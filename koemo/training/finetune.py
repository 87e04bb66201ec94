"""End-to-end training: the encoders' torch modules fine-tuned together with the fusion network.

The encoders (``koemo.encoders``) give fine-tunable modules with this contract:

- speech: ``forward(waves [B, S], lengths [B]) -> (frames [B, T, D], frame_lengths [B])``;
- text: ``forward(texts: list[str]) -> (tokens [B, T, D], mask [B, T] bool)``.

:class:`EndToEnd` chains them into a fusion model and has the same call signature as a fusion
model (``audio, audio_mask, text, text_mask``) so :func:`koemo.training.trainer.train_fold`
trains either; here ``audio`` is the padded waveforms and ``text`` the list of strings
(:class:`koemo.training.data.FeatureData` built with waveforms and strings, see
:func:`raw_inputs`). The paper fine-tunes both encoders this way; on CPU it is slow (see
docs/training.md), so frozen features from the store are the default.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from koemo.data.manifest import Utterance
from koemo.errors import KoemoError
from koemo.fusion import FusionModel


class EndToEnd(nn.Module):
    def __init__(self, speech: nn.Module, text: nn.Module, fusion: FusionModel,
                 freeze_speech: bool = False, freeze_text: bool = False):
        super().__init__()
        self.speech, self.text, self.fusion = speech, text, fusion
        for module, frozen in ((speech, freeze_speech), (text, freeze_text)):
            for p in module.parameters():
                p.requires_grad_(not frozen)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, text: Sequence[str],
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        frames, frame_lengths = self.speech(audio, audio_mask.sum(dim=1))
        frame_mask = torch.arange(frames.shape[1], device=frames.device)[None, :] < frame_lengths.to(frames.device)[:, None]
        tokens, token_mask = self.text(list(text))
        return self.fusion(frames, frame_mask, tokens, token_mask.to(tokens.device))


def build_end_to_end(recipe, n_labels: int) -> tuple[EndToEnd, dict]:
    """The recipe's encoders as fine-tunable modules + its fusion model, and their ids."""
    from koemo.encoders import get_speech_encoder, get_text_encoder
    from koemo.encoders.base import speech_settings
    from koemo.fusion import build_from_config

    if recipe.encoders.prosody:
        raise KoemoError("encoders.prosody reads frozen features; it cannot be fine-tuned end to end "
                         "(set encoders.finetune: false or encoders.prosody: false)")
    se = get_speech_encoder(recipe.encoders.speech, **speech_settings(recipe.encoders))
    te = get_text_encoder(recipe.encoders.text)
    speech, text = se.torch_module(), te.torch_module()
    fusion = build_from_config(recipe.model, se.dim, te.dim, n_labels)
    return EndToEnd(speech, text, fusion), end_to_end_meta(recipe)


def end_to_end_meta(recipe) -> dict:
    """What a bundle records of the fine-tuned encoders (their starting weights' ids)."""
    from koemo.encoders.base import speech_settings
    from koemo.training.features import encoder_meta

    enc = recipe.encoders
    return {"speech": encoder_meta("speech", enc.speech, finetuned=True, **speech_settings(enc)),
            "text": encoder_meta("text", enc.text, finetuned=True)}


def raw_inputs(utts: Sequence[Utterance], sources: Sequence[str]) -> tuple[dict, dict]:
    """Waveforms ``{id: float32 [S]}`` (16 kHz) and texts ``{source: {id: str}}``; utterances
    without a source's transcript are left out of it (the trainer then names them)."""
    from koemo.data.audio import load_audio

    audio = {u.id: np.asarray(load_audio(u.audio, start=u.start, end=u.end, name=u.id), dtype=np.float32)
             for u in utts}
    text = {s: {u.id: u.text_for(s) for u in utts if s == "gold" or s in u.transcripts} for s in sources}
    return audio, text
