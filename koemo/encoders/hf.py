"""Any ``transformers`` model as an encoder, by local directory or hub name.

- ``hf-speech:<dir-or-name>``: wav2vec 2.0 / HuBERT / WavLM (anything ``AutoModel`` loads with a
  convolutional front end), frames at ``16000 / prod(conv_stride)`` per second (50 for those).
- ``hf-text:<dir-or-name>``: BERT-like models (KLUE-BERT, HanBERT, ...); one vector per token,
  special tokens included.
- ``embeddinggemma-300m``: the installed EmbeddingGemma-300M, token vectors (768).

Hub names are resolved from the local Hugging Face cache only; koemo never downloads weights at
run time unless ``KOEMO_HF_DOWNLOAD=1`` is set (for users with internet who want the paper's
wav2vec 2.0 / HanBERT setting). ``layer=k`` picks ``hidden_states[k]`` (0 = embeddings);
``None`` is the last layer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from koemo.encoders.base import (
    SPEECH_ENCODERS,
    TEXT_ENCODERS,
    SpeechEncoder,
    TextEncoder,
    fingerprint,
    num_threads,
    short,
    weight_files,
)
from koemo.errors import KoemoError

log = logging.getLogger("koemo")
BATCH = 16


def resolve_model_dir(name: str) -> Path:
    """A local directory for ``name``: the directory itself, or the hub snapshot in the local
    cache (downloaded only with ``KOEMO_HF_DOWNLOAD=1``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise KoemoError(f"{path}: not a transformers model directory (no config.json)")
        return path.resolve()
    allow = os.environ.get("KOEMO_HF_DOWNLOAD") == "1"
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=not allow))
    except Exception as e:  # noqa: BLE001 - hub errors vary by version
        hint = "" if allow else "; set KOEMO_HF_DOWNLOAD=1 to allow downloading it"
        raise KoemoError(f"{name}: no such local model directory and not in the Hugging Face cache"
                         f" ({type(e).__name__}){hint}") from None


def _torch_setup():
    import torch

    torch.set_num_threads(num_threads())
    return torch


# ---------------------------------------------------------------------------------------------
# speech


def _receptive_field(config) -> int:
    kernels = list(getattr(config, "conv_kernel", [400]))
    strides = list(getattr(config, "conv_stride", [320]))
    rf, jump = kernels[0], strides[0]
    for k, s in zip(kernels[1:], strides[1:]):
        rf += (k - 1) * jump
        jump *= s
    return rf


def _normalize(wave, valid: int, do_normalize: bool):
    if not do_normalize:
        return wave
    x = wave[:valid]
    return (wave - x.mean()) / np.sqrt(x.var() + 1e-7)


class _HFWeights:
    """What the two transformers-backed encoders share: the layer choice and the id's weight checksum."""

    model_dir: Path
    layer: int | None

    def _choose_layer(self, layer: int | None) -> None:
        n = int(self.config.num_hidden_layers)
        self.layer = None if layer is None or layer >= n else int(layer)
        self._sum: str | None = None

    def _id_suffix(self) -> tuple[str, str]:
        """(layer, weight checksum) for the id; the checksum is computed once, lazily."""
        if self._sum is None:
            self._sum = fingerprint(weight_files(self.model_dir))
        return "last" if self.layer is None else str(self.layer), short(self._sum)


class HFSpeechEncoder(_HFWeights, SpeechEncoder):
    name = "hf-speech"
    finetunable = True

    def __init__(self, model: str, layer: int | None = None):
        self.model_name = model
        self.model_dir = resolve_model_dir(model)
        from transformers import AutoConfig

        self.config = AutoConfig.from_pretrained(self.model_dir)
        if not hasattr(self.config, "conv_stride"):
            raise KoemoError(f"{model}: not a wav2vec2-style speech model (no conv_stride in its config)")
        self.dim = int(self.config.hidden_size)
        self.frame_rate = 16000 / float(np.prod(self.config.conv_stride))
        self.min_samples = _receptive_field(self.config)
        self._choose_layer(layer)
        self._model = None
        self._fe = None

    @property
    def id(self) -> str:
        layer, weights = self._id_suffix()
        return f"hf-speech:{self.model_name}|float32|layer={layer}|weights={weights}"

    def _load(self):
        if self._model is None:
            torch = _torch_setup()
            from transformers import AutoModel

            try:
                from transformers import AutoFeatureExtractor

                self._fe = AutoFeatureExtractor.from_pretrained(self.model_dir)
            except (OSError, ValueError):
                from transformers import Wav2Vec2FeatureExtractor

                log.info("%s: no feature extractor config; using wav2vec2 defaults", self.model_name)
                self._fe = Wav2Vec2FeatureExtractor()
            self._model = AutoModel.from_pretrained(self.model_dir).eval()
            del torch
        return self._model

    @property
    def do_normalize(self) -> bool:
        self._load()
        return bool(getattr(self._fe, "do_normalize", True))

    def _encode(self, audio: np.ndarray) -> np.ndarray:
        import torch

        model = self._load()
        x = torch.from_numpy(_normalize(audio, len(audio), self.do_normalize).astype(np.float32))[None]
        with torch.inference_mode():
            out = model(x, output_hidden_states=self.layer is not None)
        h = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        return h[0].float().numpy()

    def torch_module(self):
        import torch
        from transformers import AutoModel

        enc = self
        enc._load()
        model = AutoModel.from_pretrained(self.model_dir)
        model.train()

        class HFSpeechModule(torch.nn.Module):
            """``forward(waves [B, S], lengths [B]) -> (frames [B, T, dim], frame_lengths [B])``."""

            def __init__(self):
                super().__init__()
                self.model = model
                self.dim = enc.dim
                self.layer = enc.layer

            def forward(self, waves, lengths=None):
                B, S = waves.shape
                lengths = torch.full((B,), S) if lengths is None else torch.as_tensor(lengths)
                lengths = lengths.clamp(min=enc.min_samples)
                if S < enc.min_samples:
                    waves = torch.nn.functional.pad(waves, (0, enc.min_samples - S))
                mask = torch.arange(waves.shape[1])[None] < lengths[:, None]
                if enc.do_normalize:
                    m = mask.float()
                    mean = (waves * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
                    var = (((waves - mean) * m) ** 2).sum(1, keepdim=True) / m.sum(1, keepdim=True)
                    waves = (waves - mean) / torch.sqrt(var + 1e-7) * m
                out = self.model(waves, attention_mask=mask.long(), output_hidden_states=self.layer is not None)
                h = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
                frame_lengths = self.model._get_feat_extract_output_lengths(lengths).long()
                return h, frame_lengths

        return HFSpeechModule()


# ---------------------------------------------------------------------------------------------
# text


class HFTextEncoder(_HFWeights, TextEncoder):
    name = "hf-text"
    finetunable = True

    def __init__(self, model: str, layer: int | None = None, model_dir: Path | None = None,
                 display_name: str | None = None):
        super().__init__()
        self.model_name = model
        self.display = display_name or f"hf-text:{model}"
        self.model_dir = model_dir or resolve_model_dir(model)
        from transformers import AutoConfig

        self.config = AutoConfig.from_pretrained(self.model_dir)
        self.dim = int(self.config.hidden_size)
        self._choose_layer(layer)
        self._model = None
        self._tok = None

    @property
    def id(self) -> str:
        layer, weights = self._id_suffix()
        return f"{self.display}|float32|layer={layer}|specials=kept|weights={weights}"

    @property
    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model_dir)
            limits = [int(self._tok.model_max_length)] if self._tok.model_max_length < 1e6 else []
            pos = getattr(self.config, "max_position_embeddings", None)
            if pos:
                # RoBERTa-style models reserve positions for padding
                offset = (int(self.config.pad_token_id) + 1) if getattr(self.config, "model_type", "") in (
                    "roberta", "xlm-roberta", "camembert") else 0
                limits.append(int(pos) - offset)
            self.max_tokens = min(limits) if limits else 512
        return self._tok

    def _load(self):
        if self._model is None:
            _torch_setup()
            from transformers import AutoModel

            self.tokenizer  # noqa: B018 - sets max_tokens
            self._model = AutoModel.from_pretrained(self.model_dir, dtype="float32").eval()
        return self._model

    def _encode(self, texts: list[str]) -> tuple[list[np.ndarray], int]:
        import torch

        model = self._load()
        tok = self.tokenizer
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
        truncated = sum(n > self.max_tokens for n in lengths)
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=self.max_tokens, return_tensors="pt")
            with torch.inference_mode():
                res = model(**batch, output_hidden_states=self.layer is not None)
            h = res.last_hidden_state if self.layer is None else res.hidden_states[self.layer]
            mask = batch["attention_mask"].bool()
            for row, i in enumerate(idx):
                out[i] = h[row][mask[row]].float().numpy()
        return out, truncated  # type: ignore[return-value]

    def unknown_token_rate(self, texts: list[str]) -> float:
        """Share of tokens that are the tokenizer's unknown token (0 for clean Hangul)."""
        tok = self.tokenizer
        ids = [i for seq in tok(texts, add_special_tokens=False)["input_ids"] for i in seq]
        return sum(i == tok.unk_token_id for i in ids) / max(1, len(ids))

    def torch_module(self):
        import torch
        from transformers import AutoModel

        enc = self
        tok = self.tokenizer
        model = AutoModel.from_pretrained(self.model_dir, dtype="float32")
        model.train()

        class HFTextModule(torch.nn.Module):
            """``forward(texts) -> (tokens [B, T, dim], mask [B, T] bool)``; empty texts give
            one zero vector, as the frozen encoder does."""

            def __init__(self):
                super().__init__()
                self.model = model
                self.dim = enc.dim
                self.layer = enc.layer

            def forward(self, texts: list[str]):
                clean = [t.strip() if isinstance(t, str) else "" for t in texts]
                batch = tok([t or "." for t in clean], padding=True, truncation=True,
                            max_length=enc.max_tokens, return_tensors="pt")
                batch = {k: v.to(next(self.parameters()).device) for k, v in batch.items()}
                res = self.model(**batch, output_hidden_states=self.layer is not None)
                h = res.last_hidden_state if self.layer is None else res.hidden_states[self.layer]
                mask = batch["attention_mask"].bool()
                empty = torch.tensor([not t for t in clean], device=h.device)
                if empty.any():
                    h = h * (~empty)[:, None, None]
                    first = torch.zeros_like(mask)
                    first[:, 0] = True
                    mask = torch.where(empty[:, None], first, mask)
                return h, mask

        return HFTextModule()


@TEXT_ENCODERS.register("embeddinggemma-300m")
class EmbeddingGemma(HFTextEncoder):
    """EmbeddingGemma-300M token vectors (the transformer's output, before the
    sentence-transformers pooling and dense heads). Gemma Terms of Use."""

    name = "embeddinggemma-300m"
    dim = 768

    def __init__(self, layer: int | None = None, model_dir: Path | None = None):
        from koemo.models import installed_path

        path = Path(model_dir) if model_dir else installed_path("embeddinggemma-300m")
        super().__init__(str(path), layer=layer, model_dir=path, display_name="embeddinggemma-300m")


SPEECH_ENCODERS.register("hf-speech")(HFSpeechEncoder)
TEXT_ENCODERS.register("hf-text")(HFTextEncoder)
