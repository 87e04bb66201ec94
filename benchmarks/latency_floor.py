"""How fast can ``predict`` be on this CPU? The arithmetic floor of each stage.

    python benchmarks/latency_floor.py [--runs 7] [--model BUNDLE] [--json out.json]

``predict`` on a 5 s clip is a chain: the Whisper encoder's pass, greedy decoding from it, the
text encoder on the transcript, the head. Each waits for the one before, so the stages add up.
This counts the encoder's floating-point work from its config (for each
``encoders.speech_window``: the whole 30 s window, the clip window, and the merged window the
shipped recipe uses), measures what this machine's float32 matrix multiply reaches at the
encoder's own shapes (the best any implementation can hope for), and puts the encoder's floor
(its work at that rate, for the bundle's window) beside the measured stages of
``Predictor.predict`` (p50 of ``--runs``, default bundle, shared pass). It also times the
encoder's ONNX export (of the whole 30 s window) with its MatMuls quantised to int8
(onnxruntime's dynamic quantisation), the one way under the float32 floor, and how far that
moves each layer's frames: a bundle trained on float32 features would read other inputs.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def p50(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def encoder_gflop(config, frames: int, conv_frames: int | None = None) -> float:
    """Multiply-adds x 2 of a Whisper encoder pass over ``frames`` encoder frames (``2 x frames``
    mel frames): the two convolutions (over ``conv_frames``, default ``frames``), then per block
    the q/k/v/out projections, the feed-forward and the attention's two ``frames x frames``
    products. Norms, GELU and softmax are left out (a few percent)."""
    d, ff, mels = config.d_model, config.encoder_ffn_dim, config.num_mel_bins
    conv_frames = frames if conv_frames is None else conv_frames
    conv = 2 * conv_frames * mels * d * 3 + conv_frames * d * d * 3
    block = 4 * frames * d * d + 2 * frames * d * ff + 2 * frames * frames * d
    return 2 * (conv + config.encoder_layers * block) / 1e9


def window_gflop(config, window: str, samples: int) -> float:
    """The encoder's work on one clip of ``samples`` under ``window``: 1500 frames (``30s``), the
    clip's frames plus the margin (``clip``), or those and one token per merge group through the
    blocks after convolutions over the whole window (``30s-merged``)."""
    from koemo.encoders.whisper import MEL_FRAMES, MERGE_GROUP, kept_apart

    whole, kept = MEL_FRAMES // 2, kept_apart(samples)
    if window == "30s":
        return encoder_gflop(config, whole)
    if window == "clip":
        return encoder_gflop(config, kept)
    return encoder_gflop(config, kept + -(-(whole - kept) // MERGE_GROUP), conv_frames=whole)


def bundle_window(model: str | None) -> str:
    """The speech window the bundle was trained with (``30s`` for bundles from before windows)."""
    from koemo.encoders.base import DEFAULT_WINDOW, speech_settings
    from koemo.serving.loader import resolve_model
    from koemo.training.bundle import load_bundle, resolve_bundle

    config = load_bundle(resolve_bundle(resolve_model(model)[0])).config
    return speech_settings(config.get("encoders") or {}).get("window", DEFAULT_WINDOW)


def matmul_gflops(config, runs: int) -> float:
    """The best float32 rate torch reaches here on the encoder's own products (1500 frames)."""
    import torch

    d, ff, best = config.d_model, config.encoder_ffn_dim, 0.0
    for k, n in ((d, ff), (ff, d), (d, d)):
        a, b = torch.randn(1500, k), torch.randn(k, n)
        best = max(best, 2 * 1500 * k * n / p50(lambda: a @ b, runs * 3) / 1e9)
    return best


def five_second_clip():
    """The EmotionTTS clip nearest 5 s (``bench_shared_pass.py latency``'s) and its samples."""
    from bench_shared_pass import _utts

    from koemo.data.audio import load_audio

    utt = min(_utts(), key=lambda u: abs(u.duration - 5.0))
    return utt, load_audio(utt.audio)


def predict_stages(model: str | None, audio: np.ndarray, runs: int) -> dict:
    """p50 of each stage ``Predictor.predict`` times, and of the whole call, on ``audio``."""
    from koemo.serving.limits import Limits
    from koemo.serving.loader import load_predictor

    predictor = load_predictor(model, limits=Limits(max_duration_s=0), shared_pass=True)
    predictor.predict(audio)
    timings, total = [], []
    for _ in range(runs):
        t = time.perf_counter()
        timings.append(predictor.predict(audio)["timings"])
        total.append(time.perf_counter() - t)
    out = {k: float(np.median([t[k] for t in timings])) for k in timings[0] if k != "total"}
    out["total"] = float(np.median(total))
    return out


def int8_encoder(enc, audio: np.ndarray, runs: int) -> dict:
    """The every-layer ONNX encoder against the same graph with int8 MatMuls: p50 and, per
    layer, the mean |difference| of the clip's frames relative to their mean |value|."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from koemo.encoders.whisper import log_mel_windows
    from koemo.encoders.whisper_onnx import _session, onnx_path
    from koemo.paths import atomic_path, cache_root

    enc._onnx_encoder()  # exports the float32 graph into the cache where missing
    src = onnx_path(enc.checksum, None, True)
    dst = cache_root() / "bench" / f"{src.stem}-int8.onnx"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    mels, keep = log_mel_windows(audio)
    x = mels[0][None]
    res, outs = {}, {}
    for name, path in (("float32", src), ("int8", dst)):
        run = _session(path)  # the service's session options
        outs[name] = run(x)[0, : keep[0]]
        res[f"{name}_p50_s"] = p50(lambda: run(x), runs)
    ref, q = outs["float32"], outs["int8"]
    res["layer_relative_error"] = [float(np.abs(ref[:, i] - q[:, i]).mean() / np.abs(ref[:, i]).mean())
                                   for i in range(ref.shape[1])]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--model", default=None, help="this bundle instead of the default one")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from koemo.encoders import get_speech_encoder
    from koemo.encoders.base import num_threads, speech_settings
    from koemo.encoders.whisper import WINDOWS

    torch.set_num_threads(num_threads())
    enc = get_speech_encoder("whisper-base-encoder", **speech_settings({"speech_layer": "all"}))
    config = enc._torch_encoder().config
    utt, audio = five_second_clip()
    duration = round(len(audio) / 16000, 2)
    rate = matmul_gflops(config, args.runs)
    s = predict_stages(args.model, audio, args.runs)
    window = bundle_window(args.model)
    stages = {"clip": utt.id, "duration_s": duration, "p50_s": s, "window": window}
    work = {w: window_gflop(config, w, len(audio)) for w in WINDOWS}
    int8 = int8_encoder(enc, audio, args.runs)
    floor = work[window] / rate + s["asr"] + s["text_encoder"] + s["fusion"]
    res = {"matmul_gflops": rate, "encoder_gflop": work, "encoder_floor_s": {k: v / rate for k, v in work.items()},
           "stages": stages, "predict_floor_s": floor, "int8": int8, "threads": num_threads()}
    print(json.dumps(res, indent=1))
    print(f"\nfloat32 matmul here: {rate:.0f} GFLOP/s ({num_threads()} threads); encoder pass on this {duration} s "
          "clip: " + ", ".join(f"{w} window {g:.1f} GFLOP" for w, g in work.items()) + "\n")
    print("| stage | measured p50 (s) | floor (s) |\n|---|---:|---:|")
    print(f"| speech encoder (mel + pass, {window} window) | {s['speech_encoder']:.3f} | {work[window] / rate:.3f} |")
    print(f"| ASR: VAD + greedy decoding from the pass | {s['asr']:.3f} | (measured) |")
    print(f"| text encoder | {s['text_encoder']:.3f} | (measured) |")
    print(f"| head | {s['fusion']:.3f} | (measured) |")
    print(f"| `predict` | {s['total']:.3f} | {floor:.3f} |")
    errors = ", ".join(f"{e:.3f}" for e in int8["layer_relative_error"])
    print(f"\nONNX encoder (30 s window), float32 {int8['float32_p50_s']:.3f} s, int8 MatMuls {int8['int8_p50_s']:.3f} s; "
          f"int8 frames' relative error by layer (0 = front end): {errors}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
