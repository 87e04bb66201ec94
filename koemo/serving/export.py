"""The fusion head of a model bundle as an ONNX file, checked against PyTorch, and the classifier
that runs it with onnxruntime (``koemo export``, ``koemo predict --runtime onnx``).

What is exported is the bundle's fusion network, ``model(audio, audio_mask, text, text_mask) ->
logits``, with every axis but the features dynamic (batch, speech frames, text tokens); the
speech input stage (the speaker normaliser and its corpus statistics, :class:`SpeechStage`) and
the calibration temperature stay outside it, applied in numpy by the :class:`Predictor` exactly as
for the PyTorch model. The encoders are not exported (whisper and EmbeddingGemma stay PyTorch).

Every export is checked before it is written: onnxruntime and PyTorch run the same random inputs
(batch 1 at several frame and token counts, and a padded batch of 2, drawn at the model's own input
scale) and the largest difference must be within :data:`TOLERANCE_FP32` (absolute, on the
logits); for ``int8`` (onnxruntime's dynamic quantisation of the linear and matmul weights) within
:data:`TOLERANCE_INT8` on the probabilities, and how often the top label agrees is reported. The
``.onnx`` file (one file, weights inside) and its JSON sidecar are written atomically.

``predict --runtime onnx`` uses ``BUNDLE/fusion.onnx`` if ``koemo export`` wrote it for these
weights, else exports once into ``$KOEMO_CACHE/onnx/<content hash>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from koemo.errors import KoemoError
from koemo.onnxexport import quiet_exporter, strip_debug_info
from koemo.paths import atomic_path, atomic_write_text, cache_root, sha256_file
from koemo.training import bundle as bundles

log = logging.getLogger("koemo")

FORMATS = ("onnx",)
SIDECAR_FORMAT = "koemo-onnx/1"
OPSET = 18
INPUTS = ("audio", "audio_mask", "text", "text_mask")
OUTPUT = "logits"
#: float32 export: max |logit difference| from PyTorch
TOLERANCE_FP32 = 1e-4
#: int8 export: max |probability difference| from PyTorch (softmax at temperature 1)
TOLERANCE_INT8 = 0.05
#: (frames, tokens) of the batch-1 check inputs; a padded batch of two is checked as well
CHECK_LENGTHS = ((1, 1), (2, 3), (9, 4), (64, 23))


@dataclass
class ExportReport:
    path: Path
    bytes: int
    fusion: str
    int8: bool
    opset: int
    metric: str  # what max_diff measures
    max_diff: float
    tolerance: float
    argmax_agree: int  # check inputs whose top class is the same in PyTorch and ONNX
    checks: int

    @property
    def sidecar(self) -> Path:
        return sidecar_of(self.path)


def sidecar_of(path: Path) -> Path:
    return Path(str(path) + ".json")


def weights_sha256(bundle_path: Path) -> str:
    return sha256_file(Path(bundle_path) / bundles.WEIGHTS)


# ---------------------------------------------------------------------------------------------
# inputs


def input_shapes(model) -> tuple[tuple[int, ...], int]:
    """(the speech input's feature shape, ``(D,)`` or ``(L, D)``; the text feature size)."""
    layers = int(getattr(model, "audio_layers", 1))
    dim = int(getattr(model, "input_audio_dim", model.audio_dim))
    return ((layers, dim) if layers > 1 else (dim,)), int(model.text_dim)


def random_inputs(model, batch: int, frames: int, tokens: int, rng: np.random.Generator,
                  lengths: tuple[list[int], list[int]] | None = None) -> dict[str, np.ndarray]:
    """Inputs at the scale the model reads: its standardiser's mean and sd when it has one (a
    trained bundle's head), else N(0, 1). ``lengths``: valid frames and tokens per row (padding)."""
    a_shape, t_dim = input_shapes(model)
    audio = rng.standard_normal((batch, frames, *a_shape)).astype(np.float32)
    text = rng.standard_normal((batch, tokens, t_dim)).astype(np.float32)
    if getattr(model, "standardised", False):
        audio = audio * model.audio_sd.numpy() + model.audio_mean.numpy()
        text = text * model.text_sd.numpy() + model.text_mean.numpy()
    a_len, t_len = lengths or ([frames] * batch, [tokens] * batch)
    a_mask = np.arange(frames)[None, :] < np.asarray(a_len)[:, None]
    t_mask = np.arange(tokens)[None, :] < np.asarray(t_len)[:, None]
    return {"audio": audio.astype(np.float32), "audio_mask": a_mask, "text": text.astype(np.float32),
            "text_mask": t_mask}


def check_inputs(model, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = [random_inputs(model, 1, f, t, rng) for f, t in CHECK_LENGTHS]
    out.append(random_inputs(model, 2, 11, 6, rng, lengths=([11, 4], [6, 2])))
    return out


def torch_logits(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(*(torch.from_numpy(np.ascontiguousarray(feed[name])) for name in INPUTS)).numpy()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# onnxruntime


def session(path: Path):
    """An onnxruntime CPU session for ``path`` (one-line error if onnxruntime is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KoemoError("onnxruntime is not installed; install it with: pip install 'koemo[export]'") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Logits from an exported head; feeds only the inputs the graph kept (a single-modal head
    may drop the other modality's)."""
    names = {i.name for i in sess.get_inputs()}
    return sess.run([OUTPUT], {k: v for k, v in feed.items() if k in names})[0]


def onnx_classifier(path: Path, temperature: float = 1.0):
    """``(frames [T, Da], tokens [T, Dt]) -> (probabilities, None)``: the
    :func:`koemo.serving.loader.fusion_classifier` of an exported head. No modality contribution:
    Grad-CAM needs gradients, which an inference graph has not."""
    sess = session(path)

    def classify(speech: np.ndarray, text: np.ndarray):
        a = np.asarray(speech, dtype=np.float32)[None]
        t = np.asarray(text, dtype=np.float32)[None]
        feed = {"audio": a, "audio_mask": np.ones(a.shape[:2], dtype=bool),
                "text": t, "text_mask": np.ones(t.shape[:2], dtype=bool)}
        return softmax(run_session(sess, feed)[0], temperature), None

    return classify


# ---------------------------------------------------------------------------------------------
# export


def export_model(model, out: Path, fusion: str = "fusion", where: str = "bundle") -> None:
    """Write ``model`` (a :class:`koemo.fusion.FusionModel`, eval mode) to ``out`` as float32
    ONNX with dynamic batch, frame and token axes; unchecked (see :func:`export_onnx`)."""
    try:
        import torch
        from torch.export import Dim
    except ImportError:  # pragma: no cover - torch is a dependency
        raise KoemoError("torch is needed to export") from None
    model.eval()
    # example sizes of 2 or more: the exporter fixes axes whose example size is 0 or 1; frames not a
    # multiple of the model's frame pooling, so the padding path is the one traced
    pool = max(1, int(getattr(model, "audio_pool", 1)))
    example = random_inputs(model, 2, 2 * pool + 1, 3, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    dynamic = tuple({0: Dim.DYNAMIC, 1: Dim.DYNAMIC} for _ in INPUTS)
    try:
        with quiet_exporter():
            program = torch.onnx.export(model, args, None, dynamo=True, input_names=list(INPUTS),
                                        output_names=[OUTPUT], dynamic_shapes=dynamic, opset_version=OPSET,
                                        verbose=False)
            program.save(str(out), external_data=False)
        strip_debug_info(out)
    except ImportError as e:
        raise KoemoError(f"ONNX export needs onnx and onnxscript ({e.name} missing); install them with: "
                         "pip install 'koemo[export]'") from None
    except KoemoError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; say which head and why
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise KoemoError(f"{where}: the {fusion} fusion head cannot be exported to ONNX "
                         f"({type(e).__name__}: {reason[:200]})") from None


def quantise(src: Path, out: Path) -> None:
    """onnxruntime's dynamic int8 quantisation (weights int8, activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_exporter():
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)


def compare(model, path: Path, int8: bool) -> tuple[str, float, float, int, int]:
    """(metric, max difference, tolerance, top-class agreements, checks) of the ONNX file at
    ``path`` against ``model`` on :func:`check_inputs`."""
    sess = session(path)
    diff, agree, checks = 0.0, 0, 0
    for feed in check_inputs(model):
        ref, got = torch_logits(model, feed), run_session(sess, feed)
        if ref.shape != got.shape:
            raise KoemoError(f"{path}: ONNX gives logits of shape {got.shape}, PyTorch {ref.shape}")
        if int8:
            d = np.abs(softmax(ref) - softmax(got)).max()
        else:
            d = np.abs(ref.astype(np.float64) - got).max()
        diff = max(diff, float(d)) if np.isfinite(d) else float("inf")
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        checks += ref.shape[0]
    if int8:
        return "max |probability difference|", diff, TOLERANCE_INT8, agree, checks
    return "max |logit difference|", diff, TOLERANCE_FP32, agree, checks


def _open(bundle_path: str | Path) -> bundles.Bundle:
    path = Path(bundle_path).expanduser()
    if not path.exists():
        raise KoemoError(f"{path}: model bundle not found")
    if not path.is_dir():
        raise KoemoError(f"{path}: not a model bundle (a bundle is a directory)")
    path = bundles.resolve_bundle(path)
    if bundles.read_meta(path).get("end_to_end"):
        raise KoemoError(f"{path}: a fine-tuned (end-to-end) bundle; export reads frozen-encoder bundles only")
    return bundles.load_bundle(path)


def default_out(bundle_path: Path, int8: bool = False) -> Path:
    return Path(bundle_path) / (bundles.ONNX_INT8 if int8 else bundles.ONNX)


def export_onnx(bundle_path: str | Path, out_path: str | Path | None = None, int8: bool = False,
                fmt: str = "onnx") -> ExportReport:
    """Export the fusion head of the bundle at ``bundle_path`` (or the best of a training run's)
    to ``out_path`` (default ``BUNDLE/fusion.onnx``, ``fusion.int8.onnx`` with ``int8``), check it
    against PyTorch and write it with its sidecar; refused, writing nothing, beyond tolerance."""
    if fmt not in FORMATS:
        raise KoemoError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    bundle = _open(bundle_path)
    return export_bundle(bundle, Path(out_path).expanduser() if out_path else default_out(bundle.path, int8), int8)


def export_bundle(bundle: bundles.Bundle, out: Path, int8: bool = False) -> ExportReport:
    meta, model = bundle.meta, bundle.model
    fusion = (meta.get("model") or {}).get("fusion", type(model).__name__)
    if out.is_dir():
        raise KoemoError(f"{out}: is a directory; --out names the .onnx file to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise KoemoError(f"{out.parent}: cannot write there ({e.strerror}); pass --out FILE elsewhere") from None
    try:
        fp32 = work / "fusion.onnx"
        export_model(model, fp32, fusion, str(bundle.path))
        made = work / "fusion.int8.onnx" if int8 else fp32
        if int8:
            quantise(fp32, made)
        metric, diff, tol, agree, checks = compare(model, made, int8)
        if not diff <= tol:
            raise KoemoError(f"{bundle.path}: the ONNX export of the {fusion} head differs from PyTorch: "
                             f"{metric} {diff:.3g} > {tol:g}; not written")
        report = ExportReport(out, made.stat().st_size, fusion, int8, OPSET, metric, diff, tol, agree, checks)
        side = {
            "format": SIDECAR_FORMAT, "bundle": str(bundle.path), "weights_sha256": weights_sha256(bundle.path),
            "fusion": fusion, "labels": bundle.labels, "inputs": list(INPUTS), "output": OUTPUT,
            "audio_shape": ["batch", "frames", *input_shapes(model)[0]],
            "text_shape": ["batch", "tokens", input_shapes(model)[1]],
            "temperature": bundles.temperatures(meta)[0],
            "speech_input": ((meta.get("encoders") or {}).get("speech") or {}).get("input") or {},
            "opset": OPSET, "int8": int8, "check": {"metric": metric, "max_diff": diff, "tolerance": tol,
                                                     "argmax_agree": agree, "checks": checks},
            "versions": _versions(),
        }
        with atomic_path(out) as tmp:
            os.replace(made, tmp)
        atomic_write_text(sidecar_of(out), json.dumps(side, ensure_ascii=False, indent=1))
        return report
    finally:
        for f in work.glob("*"):
            f.unlink(missing_ok=True)
        work.rmdir()


def _versions() -> dict[str, str]:
    import torch

    from koemo import __version__

    out = {"koemo": __version__, "torch": torch.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        side = json.loads(sidecar_of(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) and side.get("format") == SIDECAR_FORMAT else None


# ---------------------------------------------------------------------------------------------
# finding an export for a bundle


def cache_key(bundle: bundles.Bundle, int8: bool) -> str:
    """What an export depends on: the weights, the model section and input sizes, int8, opset."""
    meta = bundle.meta
    what = {k: meta.get(k) for k in ("model", "audio_dim", "text_dim", "audio_layers")}
    what.update(labels=len(bundle.labels), int8=int8, opset=OPSET, sidecar=SIDECAR_FORMAT)
    h = hashlib.sha256(weights_sha256(bundle.path).encode())
    h.update(json.dumps(what, sort_keys=True).encode())
    return h.hexdigest()[:24]


def onnx_for_bundle(bundle: bundles.Bundle, int8: bool = False) -> Path:
    """The exported head for ``bundle``: ``BUNDLE/fusion(.int8).onnx`` if its sidecar names these
    weights, else the one in ``$KOEMO_CACHE/onnx/<hash>/`` (exported there first if missing)."""
    mine = default_out(bundle.path, int8)
    if mine.is_file():
        side = read_sidecar(mine)
        if side and side.get("weights_sha256") == weights_sha256(bundle.path) and side.get("int8") == int8:
            return mine
        log.warning("%s: made for other weights (or no sidecar); using a fresh export", mine)
    cached = cache_root() / "onnx" / cache_key(bundle, int8) / mine.name
    if not (cached.is_file() and read_sidecar(cached)):
        log.info("%s: exporting the fusion head to %s", bundle.path, cached)
        export_bundle(bundle, cached, int8)
    return cached
