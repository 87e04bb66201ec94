"""Seconds to train a grid row's folds: one fold at a time vs stacked (koemo.training.stacked),
each with glibc's default allocator and with koemo's (koemo/allocator.py).

Synthetic inputs of the shipped recipe's sizes (300 clips; speech statistics of 7 Whisper layers,
2 x 7 x 512 = 7,168 values; 10-30 768-d token vectors a transcript; CR on two text paths), so it runs without
the feature store; each setting in its own process (the allocator is set once per process).

    python benchmarks/bench_folds.py [--folds 25] [--epochs 30] [--fusion linear] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run_one(folds: int, epochs: int, fusion: str, stack: bool) -> dict:
    """In this process: train ``folds`` folds for ``epochs`` epochs; seconds of setup + training."""
    import numpy as np

    try:
        from koemo.allocator import tune_allocator
    except ImportError:  # koemo before the allocator settings (to compare with an older checkout)
        def tune_allocator() -> bool:
            return False
    from koemo.config import Recipe
    from koemo.data.splits import Fold
    from koemo.training.data import FeatureData
    from koemo.training.run import run_folds

    tuned = tune_allocator()
    labels = ["neutral", "happy", "sad", "angry"]
    rng = np.random.default_rng(0)
    ids = [f"u{i:03d}" for i in range(300)]
    audio = {u: rng.standard_normal((1, 7, 1024)).astype(np.float16) for u in ids}
    text = {s: {u: rng.standard_normal((int(rng.integers(10, 31)), 768)).astype(np.float16) for u in ids}
            for s in ("gold", "asr:x")}  # token vectors, 10-30 a transcript (embeddinggemma's)
    data = FeatureData(audio, text, {u: labels[i % 4] for i, u in enumerate(ids)}, labels)
    fold_list = [Fold(f"f{k}", [u for j, u in enumerate(ids) if j % 25 != k][:190], [],
                      [u for j, u in enumerate(ids) if j % 25 == k]) for k in range(folds)]
    r = Recipe()
    r.model.fusion, r.model.hidden, r.model.standardise, r.model.layer_mix = fusion, 128, True, "concat"
    r.split.valid = "none"
    r.train.text, r.train.epochs, r.train.batch_size = "cr:asr:x", epochs, 32
    r.train.lr, r.train.weight_decay, r.train.text_dropout, r.train.stack_folds = 1e-3, 0.05, 0.5, stack
    t0 = time.perf_counter()
    run_folds(r, fold_list, data, out_for=lambda f: None, progress=False)
    seconds = time.perf_counter() - t0
    steps = folds * epochs * 6  # 190 clips at batch 32
    return {"stacked": stack, "allocator": "koemo" if tuned else "system", "folds": folds, "epochs": epochs,
            "seconds": round(seconds, 2), "ms_per_fold_step": round(1000 * seconds / steps, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=25)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--fusion", default="linear")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", choices=["alone", "stacked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.folds, args.epochs, args.fusion, args.one == "stacked")))
        return
    rows = []
    for allocator in ("system", "koemo"):
        for mode in ("alone", "stacked"):
            env = {**os.environ, "KOEMO_MALLOC": allocator if allocator == "system" else ""}
            out = subprocess.run([sys.executable, __file__, "--one", mode, "--folds", str(args.folds),
                                  "--epochs", str(args.epochs), "--fusion", args.fusion],
                                 env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    base = rows[0]["seconds"]
    print(f"{args.fusion}, {args.folds} folds x {args.epochs} epochs (setup, training and test included)")
    print("| allocator | folds | seconds | ms per fold-step | speed-up |")
    print("|:--|:--|--:|--:|--:|")
    for r in rows:
        print(f"| {r['allocator']} | {'stacked' if r['stacked'] else 'one at a time'} | {r['seconds']:.1f} | "
              f"{r['ms_per_fold_step']:.2f} | {base / r['seconds']:.1f}x |")


if __name__ == "__main__":
    main()
