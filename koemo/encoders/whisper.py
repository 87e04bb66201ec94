"""The Whisper base encoder as a speech encoder: 512-dim frames at 50 frames/s.

Two backends over the same installed files (``koemo models install whisper-base``):

- ``ct2`` (frozen, the default for the last layer): ``ctranslate2.models.Whisper(dir).encode``.
- ``torch``: CTranslate2's ``model.bin`` read directly (:mod:`koemo.encoders.ct2bin`; float16
  weights upcast to float32, fused q/k/v split) into a ``transformers`` ``WhisperEncoder``. Used
  for fine-tuning and for any layer other than the last.

Input: the log-mel spectrogram of each 30 s window (80 mel bins, hop 10 ms); longer clips are
encoded window by window and the frames that cover the audio (``ceil(samples / 320)``) are kept
and concatenated. ``window`` says what the encoder sees of a window:

- ``30s`` (the default): the window zero-padded to 30 s as Whisper was trained, 3000 mel frames
  in, 1500 out, whatever the clip's length.
- ``clip``: only the frames that cover the audio plus :data:`CLIP_MARGIN_S` of the padding
  (at most 30 s). A 5 s clip costs a sixth of the attention and feed-forward work, and its
  features no longer depend on how much padding follows it. The decoder reads the shorter
  output as well (CTranslate2 takes any length; CER and costs in docs/encoders.md). Other features
  than ``30s``'s, so another encoder id: a bundle trained on one reads only that one.
- ``30s-merged``: the whole zero-padded window, but the padding after the clip plus
  :data:`CLIP_MARGIN_S` goes through the blocks as one token per :data:`MERGE_GROUP` frames
  (:func:`koemo.encoders.whisper_graph.merged_outputs`): a 5 s clip costs about a third of the
  work, the clip's frames still see (an average of) the padding Whisper was trained with, and
  the decoder reads 1500 frames as with ``30s``. Other features again (its own id); measured in
  docs/encoders.md. Runs in PyTorch whatever the runtime (its graph follows the clip's length).

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
from koemo.encoders.whisper_graph import encoder_outputs, merged_outputs
from koemo.errors import KoemoError
from koemo.threads import torch_threads_kept

WINDOW_SAMPLES = 30 * 16_000  # 30 s
MEL_FRAMES = 3000
HOP = 160
FRAME_SAMPLES = 2 * HOP  # the encoder's stride-2 convolution: 20 ms per frame
MODEL_NAME = "whisper-base"
WINDOWS = ("30s", "clip", "30s-merged")
CLIP_MARGIN_S = 1.0  # window="clip": the padding kept after the audio (the decoder sees where speech ends)
MERGE_GROUP = 8  # window="30s-merged": padding frames per token


def window_frames(chunk_samples: int, window: str) -> int:
    """Encoder frames fed for a window holding ``chunk_samples`` of audio: all 1500 (``30s``),
    or those covering the audio plus the margin (``clip``). ``30s-merged`` feeds the whole window
    (:func:`kept_apart` says which frames it keeps unmerged)."""
    return kept_apart(chunk_samples) if window == "clip" else MEL_FRAMES // 2


def kept_apart(chunk_samples: int) -> int:
    """The frames covering the audio plus :data:`CLIP_MARGIN_S` (at most a window): all the
    ``clip`` window feeds, and those the ``30s-merged`` window computes one by one."""
    keep = max(1, math.ceil(chunk_samples / FRAME_SAMPLES))
    return min(MEL_FRAMES // 2, keep + round(CLIP_MARGIN_S * 16_000 / FRAME_SAMPLES))


def log_mel_windows(audio: np.ndarray, n_mels: int = 80, window: str = "30s") -> tuple[list[np.ndarray], list[int]]:
    """The log-mel input of each window (``[n_mels, 3000]``, or shorter with ``window="clip"``)
    and the number of encoder frames to keep from each. The log-mel is always computed over the
    zero-padded 30 s (Whisper's level floor is set by the window's loudest frame, which the
    padding never is), then cut to what the encoder sees."""
    fe = _feature_extractor(n_mels)
    windows, keep = [], []
    n = max(1, len(audio))
    for start in range(0, n, WINDOW_SAMPLES):
        chunk = audio[start : start + WINDOW_SAMPLES]
        keep.append(max(1, math.ceil(len(chunk) / FRAME_SAMPLES)))
        padded = np.pad(chunk, (0, WINDOW_SAMPLES - len(chunk))).astype(np.float32)
        mel = fe(padded, padding=0)[:, : 2 * window_frames(len(chunk), window)]
        windows.append(np.ascontiguousarray(mel, dtype=np.float32))
    return windows, keep


def same_length_runs(mels: list[np.ndarray]) -> list[np.ndarray]:
    """Consecutive windows of one length stacked into a batch (all of them with ``30s``; the
    whole windows and then the shorter last one with ``clip``)."""
    runs: list[list[np.ndarray]] = []
    for m in mels:
        if runs and runs[-1][0].shape == m.shape:
            runs[-1].append(m)
        else:
            runs.append([m])
    return [np.stack(r) for r in runs]


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
                mels.append(np.stack(m))
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
                 model_dir: str | Path | None = None, runtime: str = "torch", window: str = "30s"):
        self.model_dir = _model_dir(model_dir)
        if window not in WINDOWS:
            raise KoemoError(f"{self.name}: window must be one of {', '.join(WINDOWS)}, not {window!r}")
        self.window = window
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
        self.backend = backend or ("ct2" if layer is None and window == "30s" else "torch")
        if self.backend not in ("ct2", "torch"):
            raise KoemoError(f"{self.name}: backend must be ct2 or torch, not {self.backend!r}")
        if self.backend == "ct2" and layer is not None:
            raise KoemoError(f"{self.name}: the CTranslate2 backend gives the last layer only; use backend=torch")
        if runtime not in self.runtimes:
            raise KoemoError(f"{self.name}: runtime must be {' or '.join(self.runtimes)}, not {runtime!r}")
        if self.backend == "ct2" and window != "30s":
            raise KoemoError(f"{self.name}: the CTranslate2 backend encodes whole 30 s windows; use backend=torch")
        # the ct2 backend is CTranslate2's own runtime already; the merged window's graph depends on
        # the clip's length, which the exported graph cannot follow: PyTorch runs it either way
        self.runtime = runtime if self.backend == "torch" and window != "30s-merged" else "torch"
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
        mel = {"30s": "30s-window", "clip": f"clip+{CLIP_MARGIN_S:g}s",
               "30s-merged": f"30s-window-merged{MERGE_GROUP}+{CLIP_MARGIN_S:g}s"}[self.window]
        return f"{self.name}|{self.backend}-float32|layer={layer}|mel={mel}|model={short(self.checksum)}"

    def _ct2_model(self):
        if self._ct2 is None:
            import ctranslate2

            with torch_threads_kept():
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
        outs, keep = self._window_outputs(audio)
        capture = getattr(_CAPTURE, "windows", None)
        if capture is not None:
            capture.append(outs)
        return np.concatenate([out[:k] for out, k in zip(outs, keep)])

    def encode_windows(self, audio: np.ndarray, where: str = "<audio>") -> tuple[np.ndarray, list[np.ndarray] | None]:
        """``encode``'s frames plus the final layer's output over each window as the encoder saw
        it (``[T_w, dim]``; T_w = 1500 with ``window="30s"``), what a Whisper decoder reads, from
        the same pass; None where this encoder does not compute the final layer (``layer=k`` <
        last). :mod:`koemo.asr.shared_pass` decodes the transcript from it, so one pass serves both."""
        _CAPTURE.windows = []
        try:
            frames = self.encode(audio, where)
            outs = _CAPTURE.windows[-1]
        finally:
            _CAPTURE.windows = None
        if self.stacked:  # the last of the stack is the final (normed) output
            return frames, [np.ascontiguousarray(out[:, -1, :]) for out in outs]
        return frames, ([np.ascontiguousarray(out) for out in outs] if self.layer is None else None)

    def _window_outputs(self, audio: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        """The encoder output of every window as the encoder saw it, and the frames of each that
        cover the audio."""
        mels, keep = log_mel_windows(audio, window=self.window)
        outs: list[np.ndarray] = []
        if self.window == "30s-merged":  # each window keeps its own frames apart: one at a time
            import torch

            n = max(1, len(audio))
            chunks = [min(WINDOW_SAMPLES, n - start) for start in range(0, n, WINDOW_SAMPLES)]
            with torch.inference_mode():
                for mel, samples in zip(mels, chunks):
                    outs.extend(merged_outputs(self._torch_encoder(), torch.from_numpy(mel[None]),
                                               kept_apart(samples), MERGE_GROUP, bool(self.stacked)).numpy())
            return outs, keep
        for batch in same_length_runs(mels):
            if self.backend == "ct2":
                import ctranslate2

                out = np.array(self._ct2_model().encode(ctranslate2.StorageView.from_array(batch), to_cpu=True))
            elif self.runtime == "onnx":
                out = self._onnx_encoder()(batch)
            else:
                import torch

                with torch.inference_mode():
                    out = encoder_outputs(self._torch_encoder(), torch.from_numpy(batch), bool(self.stacked)).numpy()
            outs.extend(out)
        return outs, keep

    def torch_module(self):
        """A fresh fine-tunable module (its own copy of the weights)."""
        if self.stacked:
            raise KoemoError(f"{self.name}: fine-tuning takes one layer, not layer={ALL_LAYERS}")
        if self.window != "30s":
            raise KoemoError(f"{self.name}: fine-tuning encodes whole 30 s windows; window={self.window!r} is for frozen features")
        enc = load_torch_whisper_encoder(self.model_dir, layers=self.layer)
        enc.train()
        return _torch_module_class()(enc, enc.config.num_mel_bins)
