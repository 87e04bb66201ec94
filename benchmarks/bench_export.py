"""The fusion head in PyTorch vs its ONNX export in onnxruntime (float32 and int8): latency per
call and file size, on this machine.

For a bundle's head (default: the shipped one, ``$KOEMO_CACHE/bundles/default``) it exports both
ONNX files into a temporary directory (the bundle is only read), then times each classifier as the
predictor calls it on the input of a typical 5 s clip (the speech frames the bundle's speech stage
gives for 5 s of Whisper frames at 50/s, and 24 text tokens):

- ``torch``: the model's forward under ``inference_mode`` plus the softmax;
- ``torch + Grad-CAM``: what ``koemo predict`` runs by default (forward and backward for the
  audio/text contribution);
- ``onnx fp32`` and ``onnx int8``: :func:`koemo.serving.export.onnx_classifier`.

It reports p50/p95 over ``--calls`` calls after 20 warm-up calls, the file sizes (the bundle's
``model.safetensors``, the state dict's tensors, each ``.onnx``), the largest probability difference
on the benchmark input, and the export checks' differences.

``--fusion NAME [--hidden 768]`` measures instead an untrained head of that fusion reading the
bundle's encoders' single-layer frames (speech: 50 frames/s of the encoder's size, text: tokens),
written to a temporary bundle: the shipped head is a linear probe on clip statistics, and a head
over frames (fusion-transformer, mult) costs far more. Latency does not depend on training.

Usage::

    python benchmarks/bench_export.py [--bundle DIR | --fusion NAME [--hidden N]] [--calls 300] [--tokens 24] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES_PER_S = 50  # whisper-base encoder


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def timed(fn, speech, text, calls: int) -> dict:
    for _ in range(20):
        fn(speech, text)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(speech, text)
        times.append(time.perf_counter() - t0)
    return {"p50_ms": 1e3 * pct(times, 50), "p95_ms": 1e3 * pct(times, 95), "mean_ms": 1e3 * float(np.mean(times))}


def untrained_bundle(base, fusion: str, hidden: int, out: Path) -> Path:
    """A bundle of an untrained ``fusion`` head over ``base``'s encoders' frames (one layer)."""
    import torch

    from koemo.config import ModelConfig
    from koemo.fusion import build_from_config
    from koemo.training.bundle import describe_model, write_bundle

    encoders = base.meta.get("encoders") or {}
    speech_dim = int((encoders.get("speech") or {}).get("dim") or 512)
    torch.manual_seed(0)
    cfg = ModelConfig(fusion=fusion, hidden=hidden, heads=8, dropout=0.0)
    model = build_from_config(cfg, speech_dim, int(base.meta["text_dim"]), len(base.labels))
    meta = {**describe_model(cfg, model), "labels": base.labels, "complete": True,
            "encoders": {"speech": {"dim": speech_dim, "input": {"view": "frames", "pool": 1}}}}
    return write_bundle(out, meta, {}, model.state_dict())


def main() -> int:
    import onnxruntime
    import torch

    from koemo.serving import export as ex
    from koemo.serving.loader import (
        default_bundle_dir,
        fusion_classifier,
        speech_stage_of,
    )
    from koemo.training.bundle import WEIGHTS, load_bundle, resolve_bundle, temperatures

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped one)")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=5.0, help="clip length the input stands for")
    ap.add_argument("--tokens", type=int, default=24, help="text tokens of the input")
    ap.add_argument("--fusion", default=None, help="an untrained head of this fusion instead (see above)")
    ap.add_argument("--hidden", type=int, default=768, help="its hidden size (with --fusion)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    bundle = load_bundle(resolve_bundle(args.bundle or default_bundle_dir()))
    scratch = tempfile.TemporaryDirectory(prefix="koemo-bench-export-")
    if args.fusion:
        bundle = load_bundle(untrained_bundle(bundle, args.fusion, args.hidden, Path(scratch.name) / "bundle"))
    model = bundle.model
    weights_file = (bundle.path / WEIGHTS).stat().st_size
    stage = speech_stage_of(bundle)
    frames = 1 if stage.view == "stats" else math.ceil(args.seconds * FRAMES_PER_S / max(stage.pool, 1))
    x = ex.random_inputs(model, 1, frames, args.tokens, np.random.default_rng(0))
    speech, text = x["audio"][0], x["text"][0]
    temperature = temperatures(bundle.meta)[0]

    with scratch as tmp:
        exports = {}
        for int8 in (False, True):
            t0 = time.perf_counter()
            report = ex.export_bundle(bundle, Path(tmp) / ("fusion.int8.onnx" if int8 else "fusion.onnx"), int8)
            exports["int8" if int8 else "fp32"] = (report, time.perf_counter() - t0)
        runners = {
            "torch": fusion_classifier(model, contribution=False, temperature=temperature),
            "torch + Grad-CAM": fusion_classifier(model, contribution=True, temperature=temperature),
            "onnx fp32": ex.onnx_classifier(exports["fp32"][0].path, temperature),
            "onnx int8": ex.onnx_classifier(exports["int8"][0].path, temperature),
        }
        latency = {name: timed(fn, speech, text, args.calls) for name, fn in runners.items()}
        ref = runners["torch"](speech, text)[0]
        prob_diff = {name: float(np.abs(runners[name](speech, text)[0] - ref).max()) for name in ("onnx fp32", "onnx int8")}

    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    result = {
        "bundle": str(bundle.path) if not args.fusion else f"untrained {args.fusion} (hidden {args.hidden})",
        "fusion": (bundle.meta.get("model") or {}).get("fusion"),
        "input": {"speech": list(speech.shape), "text": list(text.shape), "seconds": args.seconds},
        "calls": args.calls, "latency": latency,
        "sizes_bytes": {"model.safetensors": weights_file, "state dict tensors": tensors,
                        "onnx fp32": exports["fp32"][0].bytes, "onnx int8": exports["int8"][0].bytes},
        "export_s": {k: round(v[1], 2) for k, v in exports.items()},
        "check": {k: {"metric": v[0].metric, "max_diff": v[0].max_diff, "tolerance": v[0].tolerance,
                      "argmax_agree": f"{v[0].argmax_agree}/{v[0].checks}"} for k, v in exports.items()},
        "max_prob_diff_on_input": prob_diff,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['bundle']} ({result['fusion']} head); input speech {result['input']['speech']}, "
          f"text {result['input']['text']}; {args.calls} calls; torch threads {torch.get_num_threads()}")
    base = latency["torch"]["p50_ms"]
    print(f"{'runtime':<18}{'p50 ms':>9}{'p95 ms':>9}{'vs torch':>10}")
    for name, t in latency.items():
        print(f"{name:<18}{t['p50_ms']:>9.3f}{t['p95_ms']:>9.3f}{base / t['p50_ms']:>9.2f}x")
    print("sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in result["sizes_bytes"].items()))
    print("export checks: " + "; ".join(f"{k}: {c['metric']} {c['max_diff']:.3g} (tolerance {c['tolerance']:g}), "
                                         f"top label {c['argmax_agree']}" for k, c in result["check"].items()))
    print("max |probability difference| on the input: " + ", ".join(f"{k} {v:.2g}" for k, v in prob_diff.items()))
    print(f"export time (s): {result['export_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
