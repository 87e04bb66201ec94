"""The torch Whisper encoder run by onnxruntime (``koemo predict|serve --runtime onnx``).

Why: the encoder's pass over a window is most of a prediction (0.81 of ~1.2 s for a 5 s
clip, docs/asr.md), and onnxruntime runs the same float32 graph faster than PyTorch on this CPU
(0.81 against 0.88 s in ``benchmarks/bench_shared_pass.py latency``, docs/serving.md). Its outputs equal PyTorch's within float16 rounding, the precision
the feature store keeps, so the encoder id does not change: a bundle trained on the store's
features reads these unchanged. The graph is exported once per weights file, layer setting,
torch and transformers version into the cache (atomically), and checked against PyTorch on a
fixed input before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from koemo.errors import KoemoError
from koemo.paths import atomic_path, cache_root

log = logging.getLogger("koemo")

#: largest |onnxruntime - PyTorch| allowed, relative to the largest output: 1e-4 is far inside a
#: float16 step (2^-10 relative) and far above float32 reordering noise (~1e-6)
REL_TOLERANCE = 1e-4
OPSET = 18


def _module(encoder, stacked: bool):
    import torch

    from koemo.encoders.whisper_graph import encoder_outputs

    class Outputs(torch.nn.Module):
        """``mel [windows, n_mels, 2T] -> [windows, T, 7, dim]`` (stacked) or ``[windows, T, dim]``."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, mel):
            return encoder_outputs(self.encoder, mel, stacked)

    return Outputs().eval()


def _check_input(n_mels: int, frames: int = 3000) -> np.ndarray:
    """A fixed log-mel-like input (Whisper's log-mels lie in about [-1.5, 1.5])."""
    return np.random.default_rng(0).uniform(-1.0, 1.0, (1, n_mels, frames)).astype(np.float32)


def export(encoder, out: Path, stacked: bool) -> float:
    """Write ``encoder`` (a transformers ``WhisperEncoder``) to ``out`` as float32 ONNX with
    dynamic window and time axes (a whole 30 s window, or a clip's frames); returns the check's
    relative difference, the worst of a whole window and a short one. Raises if the check fails."""
    import torch
    from torch.export import Dim

    from koemo.onnxexport import quiet_exporter, strip_debug_info

    module = _module(encoder, stacked)
    n_mels = encoder.config.num_mel_bins
    # 2 windows of 2 x 1,000 mel frames: both axes stay dynamic (a window is up to 3,000 frames)
    example = torch.from_numpy(np.concatenate([_check_input(n_mels, 2000)] * 2))
    halves = Dim("frames", min=1, max=1500)
    with atomic_path(out) as tmp:
        try:
            with quiet_exporter():
                program = torch.onnx.export(module, (example,), None, dynamo=True, input_names=["mel"],
                                            output_names=["hidden"], dynamic_shapes=({0: Dim.DYNAMIC, 2: 2 * halves},),
                                            opset_version=OPSET, verbose=False)
                program.save(str(tmp), external_data=False)
            strip_debug_info(tmp)
        except ImportError as e:
            raise KoemoError(f"--runtime onnx needs onnx, onnxscript and onnxruntime ({e.name} missing); "
                             "install them with: pip install 'koemo[export]'") from None
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; say what failed
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise KoemoError(f"the Whisper encoder cannot be exported to ONNX ({reason})") from None
        session, diff = _session(tmp), 0.0
        for frames in (3000, 500):
            x = _check_input(n_mels, frames)
            with torch.inference_mode():
                ref = module(torch.from_numpy(x)).numpy()
            diff = max(diff, float(np.abs(session(x) - ref).max() / max(float(np.abs(ref).max()), 1e-6)))
        if not diff <= REL_TOLERANCE:
            raise KoemoError(f"{out}: the ONNX Whisper encoder differs from PyTorch by {diff:.2e} of the "
                             f"largest output (allowed {REL_TOLERANCE:g}); use --runtime torch")
    return diff


def _session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    from koemo.encoders.base import num_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda mel: session.run(None, {"mel": np.ascontiguousarray(mel, dtype=np.float32)})[0]


def onnx_path(checksum: str, layers: int | None, stacked: bool) -> Path:
    """Where the export of these weights (``checksum``) with this layer setting lives."""
    import torch
    import transformers

    what = {"weights": checksum, "layers": layers, "stacked": stacked, "opset": OPSET, "graph": "any-length",
            "torch": torch.__version__, "transformers": transformers.__version__}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "onnx" / f"whisper-encoder-{digest}.onnx"


def onnx_encoder(load_encoder: Callable[[], object], checksum: str, layers: int | None,
                 stacked: bool) -> Callable[[np.ndarray], np.ndarray]:
    """``mel -> outputs`` under onnxruntime, exporting ``load_encoder()`` first if this setting
    has no export in the cache yet."""
    path = onnx_path(checksum, layers, stacked)
    if not path.is_file():
        log.info("exporting the Whisper encoder to ONNX (once): %s", path)
        diff = export(load_encoder(), path, stacked)
        log.info("ONNX Whisper encoder checked against PyTorch: max difference %.1e of the largest output", diff)
    return _session(path)


__all__ = ["REL_TOLERANCE", "export", "onnx_encoder", "onnx_path"]
