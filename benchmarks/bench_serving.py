"""Latency and throughput of koemo's product path, on this machine, over loopback only.

Measures, for a real ~5 s EmotionTTS clip:

1. ``Predictor.predict`` in-process: end-to-end latency p50/p95 as served (the speech encoder runs
   beside ASR), and with the stages in sequence for the per-stage breakdown (ASR, speech encoder,
   text encoder, fusion incl. Grad-CAM contribution);
2. the HTTP service (``koemo serve`` in a subprocess on 127.0.0.1): sequential request latency
   p50/p95 (upload + decode + predict + JSON);
3. the service under 4 concurrent clients: throughput (requests/s) and latency p50/p95.

Usage::

    python benchmarks/bench_serving.py [--model BUNDLE] [--runs 10] [--clients 4] [--requests 8]

Without ``--model`` it uses the bundle ``make demo`` trains (``$KOEMO_CACHE/bundles/default``); if
there is none, it trains a small one (8 EmotionTTS clips, golden text, the recipe's default
encoders, koemo's own trainer) into ``$KOEMO_CACHE/bundles/bench-quick`` once and reuses it; the
latency does not depend on how well the fusion model was trained. Loops are bounded.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LABELS = ("neutral", "happy", "sad", "angry")


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def pick_clip(utts, seconds: float = 5.0):
    return min(utts, key=lambda u: (abs(u.duration - seconds), u.id))


def quick_bundle(utts, out: Path) -> Path:
    """Train a small bundle with koemo's trainer on 8 real clips (2 per emotion)."""
    from koemo.config import Recipe
    from koemo.data.audio import load_audio
    from koemo.data.splits import Fold
    from koemo.encoders import get_speech_encoder, get_text_encoder
    from koemo.training.data import FeatureData
    from koemo.training.trainer import train_fold

    if (out / "bundle.json").is_file():
        return out
    picked = []
    for label in LABELS:
        picked += sorted((u for u in utts if u.label == label), key=lambda u: u.id)[:2]
    recipe = Recipe()
    recipe.train.epochs, recipe.train.batch_size, recipe.train.lr = 4, 4, 1e-3
    speech = get_speech_encoder(recipe.encoders.speech)
    text = get_text_encoder(recipe.encoders.text)
    audio = {u.id: speech.encode(load_audio(u.audio)) for u in picked}
    gold = dict(zip([u.id for u in picked], text.encode([u.text for u in picked])))
    ids = {lab: [u.id for u in picked if u.label == lab] for lab in LABELS}
    fold = Fold("bench", [v[0] for v in ids.values()], [v[1] for v in ids.values()], [v[1] for v in ids.values()])
    data = FeatureData(audio, {"gold": gold}, {u.id: u.label for u in picked}, list(LABELS))
    encoders = {"speech": {"name": speech.name, "id": speech.id}, "text": {"name": text.name, "id": text.id}}
    train_fold(recipe, fold, data, out_dir=out, encoders=encoders, progress=False)
    return out


def bench_predict(predictor, audio, runs: int) -> dict:
    """End-to-end latency as served (speech encoder beside ASR), then a breakdown with the stages
    one after another, so each stage's time is its own."""
    from dataclasses import replace

    predictor.predict(audio, name="warmup")
    totals = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = predictor.predict(audio, name="bench")
        totals.append(time.perf_counter() - t0)
    serial = replace(predictor, overlap=False)
    serial_totals, stages = [], {s: [] for s in ("asr", "speech_encoder", "text_encoder", "fusion")}
    for _ in range(runs):
        t0 = time.perf_counter()
        r = serial.predict(audio, name="bench")
        serial_totals.append(time.perf_counter() - t0)
        for s in stages:
            stages[s].append(r["timings"][s])
    return {
        "runs": runs,
        "p50_s": pct(totals, 50), "p95_s": pct(totals, 95), "mean_s": float(np.mean(totals)),
        "stages_in_sequence": {"p50_s": pct(serial_totals, 50), "p95_s": pct(serial_totals, 95)},
        "stages_p50_s": {s: pct(v, 50) for s, v in stages.items()},
        "stages_share": {s: float(np.sum(v) / np.sum(serial_totals)) for s, v in stages.items()},
        "label": result["label"],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, url: str, limit: float = 300.0, every: float = 0.2) -> float | None:
    """Seconds until the ``koemo serve`` process ``proc`` answers ``url``/v1/health with 200; None if
    it exits first; SystemExit after ``limit`` seconds (shared with benchmarks/soak.py)."""
    import httpx

    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            return None
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        if time.perf_counter() - t0 > limit:
            raise SystemExit(f"koemo serve did not start in {limit:.0f} s")
        time.sleep(every)


def bench_service(bundle: Path, asr: str | None, data: bytes, runs: int, clients: int, requests: int) -> dict:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "koemo.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", str(bundle)] + (["--asr", asr] if asr else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        startup = wait_until_healthy(proc, url)
        if startup is None:
            raise SystemExit(f"koemo serve exited with {proc.returncode}")

        def post() -> float:
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/predict", files={"file": ("clip.wav", data, "audio/wav")}, timeout=600)
            r.raise_for_status()
            return time.perf_counter() - t0

        post()  # warm-up
        seq = [post() for _ in range(runs)]
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            loaded = list(pool.map(lambda _: post(), range(requests)))
        wall = time.perf_counter() - t0
        return {
            "startup_s": startup,
            "sequential": {"runs": runs, "p50_s": pct(seq, 50), "p95_s": pct(seq, 95)},
            "concurrent": {"clients": clients, "requests": requests, "wall_s": wall,
                           "throughput_rps": requests / wall, "p50_s": pct(loaded, 50), "p95_s": pct(loaded, 95)},
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="bundle (default: make demo's, else a quick one)")
    ap.add_argument("--asr", default=None, help="ASR backend (default: the bundle's)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    from koemo.data.audio import load_audio
    from koemo.data.loaders import LOADERS
    from koemo.errors import SkipLog
    from koemo.paths import cache_root, data_dir
    from koemo.serving.limits import Limits
    from koemo.serving.loader import default_bundle_dir, load_predictor

    utts = LOADERS.get("emotiontts")(data_dir() / "emotiontts_open_db", SkipLog())
    bundle = args.model or (default_bundle_dir() if default_bundle_dir().exists() else None)
    if bundle is None:
        print("no default bundle; training a quick one (8 clips) ...", file=sys.stderr)
        bundle = quick_bundle(utts, cache_root() / "bundles" / "bench-quick")
    clip = pick_clip(utts)
    audio = load_audio(clip.audio)
    load = os.getloadavg()
    t0 = time.perf_counter()
    predictor = load_predictor(bundle, asr=args.asr, limits=Limits())
    load_s = time.perf_counter() - t0
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_1m_at_start": load[0]},
        "bundle": str(bundle), "model": predictor.describe(),
        "clip": {"path": clip.audio, "seconds": round(len(audio) / 16000, 2)},
        "model_load_s": load_s,
        "predict": bench_predict(predictor, audio, args.runs),
    }
    del predictor
    report["service"] = bench_service(Path(bundle), args.asr, Path(clip.audio).read_bytes(), args.runs,
                                      args.clients, args.requests)
    p, s = report["predict"], report["service"]
    print(f"clip {Path(clip.audio).name} ({report['clip']['seconds']} s), {os.cpu_count()} CPUs, "
          f"load {load[0]:.2f} at start; models load in {load_s:.1f} s")
    print("| measure | p50 (s) | p95 (s) |\n|---|---|---|")
    print(f"| predict() end to end, {p['runs']} runs | {p['p50_s']:.2f} | {p['p95_s']:.2f} |")
    q = p["stages_in_sequence"]
    print(f"| predict() with the stages in sequence (breakdown below) | {q['p50_s']:.2f} | {q['p95_s']:.2f} |")
    for stage, v in p["stages_p50_s"].items():
        print(f"| - {stage} ({100 * p['stages_share'][stage]:.0f}% of the time) | {v:.2f} | |")
    print(f"| POST /v1/predict, sequential, {s['sequential']['runs']} runs | {s['sequential']['p50_s']:.2f} | "
          f"{s['sequential']['p95_s']:.2f} |")
    c = s["concurrent"]
    print(f"| POST /v1/predict, {c['clients']} concurrent clients, {c['requests']} requests | {c['p50_s']:.2f} | "
          f"{c['p95_s']:.2f} |")
    print(f"throughput with {c['clients']} clients: {c['throughput_rps']:.2f} requests/s "
          f"({c['requests']} in {c['wall_s']:.1f} s); service start-up {s['startup_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
