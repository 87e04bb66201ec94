"""The Whisper base encoder as a speech encoder: 512-dim frames at 50 frames/s.

Two backends over the same installed files (``koemo models install whisper-base``):

- ``ct2`` (frozen, the default for the last layer): ``ctranslate2.models.Whisper(dir).encode``.
- ``torch``: CTranslate2's ``model.bin`` read directly (:mod:`koemo.encoders.ct2bin`; float16
  weights upcast to float32, fused q/k/v split) into a ``transformers`` ``WhisperEncoder``. Used
  for fine-tuning and for any layer other than the last.

Input: the log-mel spectrogram of each 30 s window (the window zero-padded to 30 s as Whisper was
trained, 80 mel bins, hop 10 ms), so the encoder always sees 3000 mel frames and returns 1500
frames; the frames that cover the audio (``ceil(samples / 320)``) are kept. Longer clips are
encoded window by window and the frames concatenated.

Layers: ``layer=None`` (or the number of layers, 6 for base) is the encoder output after its final
layer norm; ``layer=k`` (0..5) is the output of the first k transformer blocks (0 = the
convolutional front end plus positions), before any final norm, as ``output_hidden_states`` gives;
``layer="all"`` is every one of them from one pass, stacked ``[T, 7, 512]`` (front end, blocks
1-5, final), for a downstream head that learns a weighted sum of layers (SUPERB style).
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path

import numpy as np

from koemo.encoders.base import ALL_LAYERS, SPEECH_ENCODERS, SpeechEncoder, installed_checksum, num_threads, short
from koemo.errors import KoemoError

WINDOW_SAMPLES = 30 * 16_000  # 30 s
MEL_FRAMES = 3000
HOP = 160
FRAME_SAMPLES = 2 * HOP  # the encoder's stride-2 convolution: 20 ms per frame
MODEL_NAME = "whisper-base"


def log_mel_windows(audio: np.ndarray, n_mels: int = 80) -> tuple[np.ndarray, list[int]]:
    """``[n_windows, n_mels, 3000]`` log-mel inputs and the number of encoder frames to keep
    from each window."""
    fe = _feature_extractor(n_mels)
    windows, keep = [], []
    n = max(1, len(audio))
    for start in range(0, n, WINDOW_SAMPLES):
        chunk = audio[start : start + WINDOW_SAMPLES]
        keep.append(max(1, math.ceil(len(chunk) / FRAME_SAMPLES)))
        padded = np.pad(chunk, (0, WINDOW_SAMPLES - len(chunk))).astype(np.float32)
        mel = fe(padded, padding=0)[:, :MEL_FRAMES]
        windows.append(mel)
    return np.stack(windows).astype(np.float32), keep


_FE: dict[int, object] = {}
_CAPTURE = threading.local()  # encode_windows: the window outputs of this thread's encoder pass


def _feature_extractor(n_mels: int):
    if n_mels not in _FE:
        from faster_whisper.feature_extractor import FeatureExtractor

        _FE[n_mels] = FeatureExtractor(feature_size=n_mels)
    return _FE[n_mels]


def _model_dir(model_dir: str | Path | None) -> Path:
    if model_dir is not None:
        path = Path(model_dir)
        if not (path / "model.bin").is_file():
            raise KoemoError(f"{path}: no CTranslate2 model.bin here")
        return path
    from koemo.models import installed_path

    return installed_path(MODEL_NAME)


# ---------------------------------------------------------------------------------------------
# CTranslate2 model.bin -> transformers WhisperEncoder


def load_torch_whisper_encoder(model_dir: str | Path, layers: int | None = None):
    """A ``transformers`` ``WhisperEncoder`` (float32) holding the weights of a CTranslate2
    Whisper ``model.bin``. With ``layers=k`` only the first k blocks are built and the final
    layer norm is dropped (the output equals ``hidden_states[k]`` of the full encoder)."""
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from koemo.encoders.ct2bin import read_ct2_variables

    v, info = read_ct2_variables(Path(model_dir) / "model.bin", prefix="encoder/")
    if not info["spec"].startswith("Whisper"):
        raise KoemoError(f"{model_dir}: model.bin holds a {info['spec']}, not a Whisper model")
    n_layers = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    config = WhisperConfig(
        d_model=int(d_model),
        num_mel_bins=int(n_mels),
        encoder_layers=n_layers if layers is None else layers,
        encoder_attention_heads=int(v["encoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    config._attn_implementation = "sdpa"
    enc = WhisperEncoder(config)

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(v[name], dtype=np.float32))

    sd = {
        "conv1.weight": t("encoder/conv1/weight"), "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"), "conv2.bias": t("encoder/conv2/bias"),
        "embed_positions.weight": t("encoder/position_encodings/encodings"),
        "layer_norm.weight": t("encoder/layer_norm/gamma"), "layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    for i in range(config.encoder_layers):
        p, q = f"encoder/layer_{i}/", f"layers.{i}."
        w, b = t(p + "self_attention/linear_0/weight"), t(p + "self_attention/linear_0/bias")
        wq, wk, wv = w.chunk(3, dim=0)
        bq, bk, bv = b.chunk(3, dim=0)
        if bk.abs().max() > 0:
            raise KoemoError(f"{model_dir}: layer {i} has a key bias, which Whisper never has")
        sd.update({
            q + "self_attn.q_proj.weight": wq, q + "self_attn.q_proj.bias": bq,
            q + "self_attn.k_proj.weight": wk,
            q + "self_attn.v_proj.weight": wv, q + "self_attn.v_proj.bias": bv,
            q + "self_attn.out_proj.weight": t(p + "self_attention/linear_1/weight"),
            q + "self_attn.out_proj.bias": t(p + "self_attention/linear_1/bias"),
            q + "self_attn_layer_norm.weight": t(p + "self_attention/layer_norm/gamma"),
            q + "self_attn_layer_norm.bias": t(p + "self_attention/layer_norm/beta"),
            q + "fc1.weight": t(p + "ffn/linear_0/weight"), q + "fc1.bias": t(p + "ffn/linear_0/bias"),
            q + "fc2.weight": t(p + "ffn/linear_1/weight"), q + "fc2.bias": t(p + "ffn/linear_1/bias"),
            q + "final_layer_norm.weight": t(p + "ffn/layer_norm/gamma"),
            q + "final_layer_norm.bias": t(p + "ffn/layer_norm/beta"),
        })
    missing, unexpected = enc.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if "embed_positions" not in m]:
        raise KoemoError(f"{model_dir}: weight mapping incomplete (missing {missing}, unexpected {unexpected})")
    if layers is not None and layers < n_layers:
        enc.layer_norm = torch.nn.Identity()
    enc.eval()
    enc.n_layers_full = n_layers  # type: ignore[attr-defined]
    return enc


def _torch_module_class():
    import torch

    class WhisperSpeechModule(torch.nn.Module):
        """Fine-tunable Whisper encoder: ``forward(waves [B, S], lengths [B]) -> (frames
        [B, T, dim], frame_lengths [B])``. The log-mel front end runs in numpy (no gradient
        is needed there); the encoder runs in torch."""

        def __init__(self, encoder, n_mels: int):
            super().__init__()
            self.encoder = encoder
            self.n_mels = n_mels
            self.dim = encoder.config.d_model

        def forward(self, waves, lengths=None):
            waves_np = waves.detach().cpu().float().numpy()
            if lengths is None:
                lengths = [waves_np.shape[1]] * waves_np.shape[0]
            mels, keeps, owners = [], [], []
            for b, n in enumerate([int(x) for x in lengths]):
                m, keep = log_mel_windows(waves_np[b, :max(n, 1)], self.n_mels)
                mels.append(m)
                keeps.extend(keep)
                owners.extend([b] * len(keep))
            x = torch.from_numpy(np.concatenate(mels)).to(next(self.parameters()).device)
            hidden = self.encoder(x).last_hidden_state  # [windows, 1500, dim]
            per_item: list[list] = [[] for _ in range(waves_np.shape[0])]
            for w, (b, k) in enumerate(zip(owners, keeps)):
                per_item[b].append(hidden[w, :k])
            seqs = [torch.cat(p) for p in per_item]
            frame_lengths = torch.tensor([len(s) for s in seqs])
            out = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
            return out, frame_lengths

    return WhisperSpeechModule


@SPEECH_ENCODERS.register("whisper-base-encoder")
class WhisperBaseEncoder(SpeechEncoder):
    name = "whisper-base-encoder"
    dim = 512
    frame_rate = 50.0
    finetunable = True
    min_samples = 1

    #: how the torch backend's graph runs: PyTorch, or its ONNX export in onnxruntime
    #: (:mod:`koemo.encoders.whisper_onnx`; equal within float16, so the id stays the same)
    runtimes = ("torch", "onnx")

    def __init__(self, layer: int | str | None = None, backend: str | None = None,
                 model_dir: str | Path | None = None, runtime: str = "torch"):
        self.model_dir = _model_dir(model_dir)
        self.n_layers = 6
        if layer == ALL_LAYERS:
            self.stacked = self.n_layers + 1
        elif layer is not None and not isinstance(layer, int):
            raise KoemoError(f"{self.name}: layer must be 0..{self.n_layers}, '{ALL_LAYERS}' or none, got {layer!r}")
        elif layer is not None and layer >= self.n_layers:
            layer = None
        if isinstance(layer, int) and layer < 0:
            raise KoemoError(f"{self.name}: layer {layer} out of range 0..{self.n_layers}")
        self.layer = layer
        self.backend = backend or ("ct2" if layer is None else "torch")
        if self.backend not in ("ct2", "torch"):
            raise KoemoError(f"{self.name}: backend must be ct2 or torch, not {self.backend!r}")
        if self.backend == "ct2" and layer is not None:
            raise KoemoError(f"{self.name}: the CTranslate2 backend gives the last layer only; use backend=torch")
        if runtime not in self.runtimes:
            raise KoemoError(f"{self.name}: runtime must be {' or '.join(self.runtimes)}, not {runtime!r}")
        # the ct2 backend is CTranslate2's own runtime already
        self.runtime = runtime if self.backend == "torch" else "torch"
        self._onnx = None
        self._ct2 = None
        self._torch = None
        self._checksum: str | None = None

    @property
    def checksum(self) -> str:
        """SHA-256 of the weights file (computed once)."""
        if self._checksum is None:
            self._checksum = installed_checksum(self.model_dir, ["model.bin"])
        return self._checksum

    @property
    def id(self) -> str:
        layer = "last" if self.layer is None else str(self.layer)
        return f"{self.name}|{self.backend}-float32|layer={layer}|mel=30s-window|model={short(self.checksum)}"

    def _ct2_model(self):
        if self._ct2 is None:
            import ctranslate2

            self._ct2 = ctranslate2.models.Whisper(
                str(self.model_dir), device="cpu", compute_type="float32",
                inter_threads=1, intra_threads=num_threads())
        return self._ct2

    def _torch_encoder(self):
        if self._torch is None:
            self._torch = load_torch_whisper_encoder(self.model_dir, layers=None if self.stacked else self.layer)
        return self._torch

    def _onnx_encoder(self):
        if self._onnx is None:
            from koemo.encoders.whisper_onnx import onnx_encoder

            layers = None if self.stacked else self.layer
            self._onnx = onnx_encoder(lambda: load_torch_whisper_encoder(self.model_dir, layers=layers),
                                      self.checksum, layers, bool(self.stacked))
        return self._onnx

    def _encode(self, audio: np.ndarray) -> np.ndarray:
        out, keep = self._window_outputs(audio)
        capture = getattr(_CAPTURE, "windows", None)
        if capture is not None:
            capture.append(out)
        return np.concatenate([out[w, :k] for w, k in enumerate(keep)])

    def encode_windows(self, audio: np.ndarray, where: str = "<audio>") -> tuple[np.ndarray, np.ndarray | None]:
        """``encode``'s frames plus the final layer's output over all 1500 frames of each 30 s
        window (``[windows, 1500, dim]``, what a Whisper decoder reads), from the same pass;
        None where this encoder does not compute the final layer (``layer=k`` < last).
        :mod:`koemo.asr.shared_pass` decodes the transcript from it, so one pass serves both."""
        _CAPTURE.windows = []
        try:
            frames = self.encode(audio, where)
            out = _CAPTURE.windows[-1]
        finally:
            _CAPTURE.windows = None
        if self.stacked:
            return frames, np.ascontiguousarray(out[:, :, -1, :])  # the last of the stack is the final (normed) output
        return frames, (np.ascontiguousarray(out) if self.layer is None else None)

    def _window_outputs(self, audio: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The encoder output over every whole window, and the frames of each that cover the audio."""
        mels, keep = log_mel_windows(audio)
        if self.backend == "ct2":
            import ctranslate2

            out = np.array(self._ct2_model().encode(ctranslate2.StorageView.from_array(mels), to_cpu=True))
        elif self.runtime == "onnx":
            out = self._onnx_encoder()(mels)
        else:
            import torch

            with torch.inference_mode():
                res = self._torch_encoder()(torch.from_numpy(mels), output_hidden_states=bool(self.stacked))
            if self.stacked:  # [windows, 1500, 7, dim]: the front end, blocks 1-5 and the final (normed) output
                out = torch.stack(res.hidden_states, dim=2).numpy()
            else:
                out = res.last_hidden_state.numpy()
        return out, keep

    def torch_module(self):
        """A fresh fine-tunable module (its own copy of the weights)."""
        if self.stacked:
            raise KoemoError(f"{self.name}: fine-tuning takes one layer, not layer={ALL_LAYERS}")
        enc = load_torch_whisper_encoder(self.model_dir, layers=self.layer)
        enc.train()
        return _torch_module_class()(enc, enc.config.num_mel_bins)
