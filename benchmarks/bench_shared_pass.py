"""One Whisper encoder pass per clip (koemo.asr.shared_pass): does the transcript get worse, and
how much faster is ``predict``?

    python benchmarks/bench_shared_pass.py cer [--layer all] [--window 30s|clip] [--limit N]
    python benchmarks/bench_shared_pass.py latency [--runs 9] [--model BUNDLE]

``cer``: all 300 EmotionTTS clips, clean and under 5 dB babble (the same mixer, seed and talker
pool as ``koemo transcribe --noise babble --snr 5``, so the noisy audio is identical), transcribed
by today's faster-whisper backend (through the transcript cache: the entries a full ``koemo
transcribe`` run uses) and by the shared pass over the speech encoder of the default bundle
(``--layer all``, torch) or the ct2 last layer (``--layer last``). CER with the project's
normalisation (:func:`koemo.asr.metrics.score`). Shared-pass transcripts are kept in
``$KOEMO_CACHE/bench/shared_pass/*.json`` as they come, so an interrupted run resumes.

``latency``: a ~5 s clip, runs interleaved so that load changes hit all four alike: (a) the ASR
stage alone (faster-whisper ``transcribe``), (b) ``Predictor.predict`` without the shared pass,
(c) with it, (d) with it and ``--runtime onnx`` (Whisper encoder and head in onnxruntime; the
encoder's export is made before timing); default bundle. p50 over ``--runs`` after one warm-up
each. Load average printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path


def _utts():
    from koemo.data.loaders import LOADERS
    from koemo.errors import SkipLog
    from koemo.paths import data_dir

    return LOADERS.get("emotiontts")(data_dir() / "emotiontts_open_db", SkipLog())


def _encoder(layer: str, window: str = "30s"):
    from koemo.encoders import get_speech_encoder
    from koemo.encoders.base import speech_settings

    section = {"speech_layer": None if layer == "last" else layer, "speech_window": window}
    return get_speech_encoder("whisper-base-encoder", **speech_settings(section))


def cer(layer: str, limit: int | None, out_dir: Path, window: str = "30s") -> dict:
    from koemo.asr.metrics import score
    from koemo.asr.noise import NoiseMaker, noise_condition
    from koemo.asr.shared_pass import SharedWhisper
    from koemo.asr.transcribe import transcribe_utterances
    from koemo.data.audio import load_audio

    utts = _utts()
    todo = utts[:limit] if limit else utts
    only = {u.id for u in todo}
    shared = SharedWhisper(_encoder(layer, window))
    key = hashlib.sha256(json.dumps(shared.params(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    table = {}
    for label, noise, snr in (("clean", None, None), ("babble 5 dB", "babble", 5.0)):
        # today's recogniser, through the cache (computed and stored where missing)
        fw = transcribe_utterances(utts, "whisper-base", noise, snr, 0, only=only, progress=True).texts
        path = out_dir / f"{'clean' if noise is None else f'{noise}{snr:g}'}-{layer}-{window}-{key}.json"
        mine = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        maker = NoiseMaker(noise_condition(noise, snr, 0), utts) if noise else None
        extra0, t0, done = shared.extra_passes, time.time(), 0
        for i, u in enumerate(todo):
            if u.id in mine:
                continue
            audio = load_audio(u.audio, start=u.start, end=u.end, allow_silent=True, name=u.id)
            if maker is not None:
                audio = maker.apply(u, audio)
            mine[u.id] = shared.transcribe(audio)
            done += 1
            path.write_text(json.dumps(mine, ensure_ascii=False, indent=0), encoding="utf-8")
            if done % 10 == 0:
                print(f"  {label}: {i + 1}/{len(todo)} shared-pass clips, {(time.time() - t0) / done:.2f} s/clip",
                      file=sys.stderr, flush=True)
        ids = [u.id for u in todo]
        refs = [u.text for u in todo]
        a = score(refs, [fw[i] for i in ids])
        b = score(refs, [mine[i] for i in ids])
        table[label] = {
            "clips": len(ids), "faster_whisper_cer": a.cer, "shared_pass_cer": b.cer,
            "delta_points": 100 * (b.cer - a.cer), "fw_empty": a.empty_hypotheses, "shared_empty": b.empty_hypotheses,
            "identical_transcripts": sum(fw[i] == mine[i] for i in ids),
            "extra_encoder_passes_this_run": shared.extra_passes - extra0,
        }
        print(json.dumps({label: table[label]}, ensure_ascii=False), flush=True)
    table["_meta"] = {"layer": layer, "window": window, "params": shared.params(),
                      "no_speech_clips": shared.no_speech_clips}
    (out_dir / f"cer-{layer}-{window}-{key}.json").write_text(json.dumps(table, indent=1, default=str), encoding="utf-8")
    print(f"{'condition':<12} {'clips':>5} {'faster-whisper':>15} {'shared pass':>12} {'delta (points)':>15}")
    for label in ("clean", "babble 5 dB"):
        r = table[label]
        print(f"{label:<12} {r['clips']:>5} {100 * r['faster_whisper_cer']:>14.2f}% {100 * r['shared_pass_cer']:>11.2f}% "
              f"{r['delta_points']:>+15.2f}")
    return table


def latency(runs: int, model: str | None = None) -> dict:
    import numpy as np

    from koemo.data.audio import load_audio
    from koemo.serving.limits import Limits
    from koemo.serving.loader import get_asr, load_predictor

    utt = min(_utts(), key=lambda u: abs(u.duration - 5.0))
    audio = load_audio(utt.audio)
    limits = Limits(max_duration_s=0)
    today = load_predictor(model, limits=limits, shared_pass=False)
    shared = load_predictor(model, limits=limits, shared_pass=True)
    onnx = load_predictor(model, limits=limits, shared_pass=True, runtime="onnx")
    assert shared.joint is not None and today.joint is None and onnx.joint is not None
    asr = get_asr("whisper-base")
    jobs = {"asr_alone": lambda: asr.transcribe(audio), "predict_today": lambda: today.predict(audio),
            "predict_shared": lambda: shared.predict(audio), "predict_shared_onnx": lambda: onnx.predict(audio)}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    stages: dict[str, list[dict]] = {"predict_today": [], "predict_shared": [], "predict_shared_onnx": []}
    load0 = os.getloadavg()
    for k, f in jobs.items():
        f()  # warm-up
    for r in range(runs):
        for k, f in jobs.items():
            t = time.perf_counter()
            out = f()
            times[k].append(time.perf_counter() - t)
            if k in stages:
                stages[k].append(out["timings"])
        print(f"  run {r + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), file=sys.stderr, flush=True)
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    res = {
        "clip": utt.id, "duration_s": round(len(audio) / 16000, 2), "runs": runs, "p50_s": p50,
        "model": shared.describe().get("bundle"),
        "ratio_today": p50["predict_today"] / p50["asr_alone"], "ratio_shared": p50["predict_shared"] / p50["asr_alone"],
        "ratio_shared_onnx": p50["predict_shared_onnx"] / p50["asr_alone"],
        "stage_p50_s": {k: {s: float(np.median([t[s] for t in v])) for s in v[0]} for k, v in stages.items()},
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count(),
        "transcripts": {"today": today.predict(audio)["transcript"], "shared": shared.predict(audio)["transcript"],
                        "shared_onnx": onnx.predict(audio)["transcript"]},
    }
    a, b = shared.predict(audio)["probabilities"], onnx.predict(audio)["probabilities"]
    res["onnx_max_probability_difference"] = max(abs(a[k] - b[k]) for k in a)
    print(json.dumps(res, indent=1, ensure_ascii=False))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["cer", "latency"])
    ap.add_argument("--layer", default="all", choices=["all", "last"], help="speech encoder whose pass is shared")
    ap.add_argument("--window", default="30s", choices=["30s", "clip"],
                    help="what the encoder sees of each window (encoders.speech_window)")
    ap.add_argument("--limit", type=int, default=None, help="first N clips only (a quick look)")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--model", default=None, help="latency: this bundle instead of the default one")
    args = ap.parse_args()
    from koemo.paths import cache_root

    out_dir = cache_root() / "bench" / "shared_pass"
    if args.what == "cer":
        cer(args.layer, args.limit, out_dir, args.window)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        res = latency(args.runs, args.model)
        (out_dir / f"latency-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
