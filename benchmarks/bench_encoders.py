"""Encoder speed on this machine, and the time to fill the feature store for EmotionTTS.

    python benchmarks/bench_encoders.py                      # per-encoder rates (a few clips/sentences)
    python benchmarks/bench_encoders.py --fill               # + fill a fresh store for all 300 clips
    python benchmarks/bench_encoders.py --speech mfcc --text e5-small --clips 3

Speech: seconds of compute per second of audio (real-time factor; lower is faster), model load
excluded (reported apart). Text: sentences per second, encoding the 30 distinct EmotionTTS
sentences in one call (batched where the encoder batches). ``--fill`` times
``FeatureStore.speech`` + ``FeatureStore.text`` from empty for every clip, with gold text plus the
whisper-base transcripts when the default-cache manifest has them (it says which). Prints a
Markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPEECH = ["mfcc", "whisper-base-encoder", "whisper-base-encoder@torch"]
TEXT = ["embeddinggemma-300m", "e5-small", "fasttext-ko"]


def _utts():
    from koemo.config import Recipe, load_config, resolve_recipe
    from koemo.data.prepare import load_or_prepare

    _, utts = load_or_prepare(load_config(Recipe, resolve_recipe("emotiontts")))
    return utts


def _speech_encoder(spec: str):
    from koemo.encoders import get_speech_encoder

    name, _, backend = spec.partition("@")
    return get_speech_encoder(name, backend=backend) if backend else get_speech_encoder(name)


def bench_speech(spec: str, clips) -> dict:
    import numpy as np

    from koemo.data.audio import load_audio

    enc = _speech_encoder(spec)
    audio = [load_audio(u.audio) for u in clips]
    t0 = time.perf_counter()
    enc.encode(audio[0][:16000])  # loads the weights
    load = time.perf_counter() - t0
    seconds = sum(len(a) for a in audio) / 16000
    t0 = time.perf_counter()
    frames = [enc.encode(a) for a in audio]
    spent = time.perf_counter() - t0
    return {"encoder": spec, "id": enc.id, "clips": len(audio), "audio_s": round(seconds, 1),
            "load_s": round(load, 2), "compute_s": round(spent, 2), "s_per_audio_s": round(spent / seconds, 4),
            "frames_per_s": round(sum(len(f) for f in frames) / seconds, 1), "dim": enc.dim,
            "finite": bool(all(np.isfinite(f).all() for f in frames))}


def bench_text(name: str, sentences: list[str]) -> dict:
    from koemo.encoders import get_text_encoder

    enc = get_text_encoder(name)
    t0 = time.perf_counter()
    enc.encode(sentences[:1])  # loads the weights
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = enc.encode(sentences)
    spent = time.perf_counter() - t0
    return {"encoder": name, "id": enc.id, "sentences": len(sentences), "load_s": round(load, 2),
            "compute_s": round(spent, 2), "sentences_per_s": round(len(sentences) / spent, 1),
            "mean_tokens": round(sum(len(a) for a in out) / len(out), 1), "dim": enc.dim}


def bench_fill(utts, speech: str, text: str, root: Path) -> dict:
    from koemo.encoders.store import FeatureStore

    sources = ["gold"]
    if all("asr:whisper-base" in u.transcripts for u in utts):
        sources.append("asr:whisper-base")
    store = FeatureStore(root)
    row = {"utterances": len(utts), "speech": speech, "text": text, "sources": sources}
    t0 = time.perf_counter()
    store.speech(speech, utts)
    row["speech_s"] = round(time.perf_counter() - t0, 1)
    for s in sources:
        t0 = time.perf_counter()
        store.text(text, utts, source=s)
        row[f"text_{s}_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    store.speech(speech, utts)
    for s in sources:
        store.text(text, utts, source=s)
    row["reread_all_s"] = round(time.perf_counter() - t0, 2)
    row["total_s"] = round(row["speech_s"] + sum(row[f"text_{s}_s"] for s in sources), 1)
    if len(sources) == 1:
        row["note"] = "no whisper-base transcripts in the default manifest: gold text only"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech", nargs="*", default=SPEECH, help="speech encoders (name[@backend])")
    ap.add_argument("--text", nargs="*", default=TEXT, help="text encoders")
    ap.add_argument("--clips", type=int, default=5, help="clips for the speech rates")
    ap.add_argument("--fill", action="store_true", help="also time filling a fresh store for all clips")
    ap.add_argument("--fill-speech", default="whisper-base-encoder")
    ap.add_argument("--fill-text", default="embeddinggemma-300m")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()

    import torch

    utts = _utts()
    clips = utts[:: max(1, len(utts) // args.clips)][: args.clips]
    sentences = sorted({u.text for u in utts})
    res = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "load_avg": os.getloadavg()}, "speech": [], "text": [], "fill": None}
    print(f"# encoders on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at start)\n")
    print("| speech encoder | s per s of audio | frames/s | load (s) | clips |")
    print("|---|---|---|---|---|")
    for spec in args.speech:
        r = bench_speech(spec, clips)
        res["speech"].append(r)
        print(f"| {spec} | {r['s_per_audio_s']:.4f} | {r['frames_per_s']} | {r['load_s']} | {r['clips']} ({r['audio_s']} s) |", flush=True)
    print("\n| text encoder | sentences/s | mean tokens | load (s) |")
    print("|---|---|---|---|")
    for name in args.text:
        try:
            r = bench_text(name, sentences)
        except Exception as e:  # noqa: BLE001 - e.g. fasttext-ko not trained yet
            print(f"| {name} | not run: {e} | | |")
            continue
        res["text"].append(r)
        print(f"| {name} | {r['sentences_per_s']} | {r['mean_tokens']} | {r['load_s']} |", flush=True)
    if args.fill:
        with tempfile.TemporaryDirectory(prefix="koemo-bench-store-") as tmp:
            r = bench_fill(utts, args.fill_speech, args.fill_text, Path(tmp))
        res["fill"] = r
        print(f"\nfill store, {r['utterances']} clips: {r['speech']} {r['speech_s']} s; " + "; ".join(
            f"{r['text']} [{s}] {r[f'text_{s}_s']} s" for s in r["sources"]) +
            f"; total {r['total_s']} s; re-read all (memory-mapped) {r['reread_all_s']} s. {r.get('note', '')}")
    res["machine"]["load_avg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
