"""``koemo predict DIR``: one Whisper pass per file, against encoding every file twice.

    python benchmarks/bench_batch.py [--clips 12] [--model default] [--json out.json]

A batch normalised by its own statistics (``--normalise speaker|folder``, the default) needs every
file's statistics before the first result. Until 2026-12-07 the first pass ran the speech encoder
on every file for its statistics and the second ran the whole pipeline again; now a head that
reads clip statistics keeps each file's encoding from the first pass (a few kB a file) and only
classifies in the second (``Recognizer.iter_batch``, ``Predictor.encode`` / ``finish``). This
times both on the same ``--clips`` EmotionTTS clips (every third clip of the corpus: several
speakers and emotions), in one process after a warm-up, and checks that they agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    from koemo.data.loaders import LOADERS
    from koemo.errors import SkipLog
    from koemo.paths import data_dir
    from koemo.serving.predictor import SpeechStage
    from koemo.serving.recognizer import Recognizer

    class TwoPasses(SpeechStage):
        """The same stage, declared not compact: the batch encodes every file again."""

        compact = False

    utts = LOADERS.get("emotiontts")(data_dir() / "emotiontts_open_db", SkipLog())
    paths = [u.audio for u in utts[::3][: args.clips]]
    rec = Recognizer.from_pretrained(args.model)
    one = rec.predictor.speech_stage
    two = TwoPasses(one.view, one.normaliser, one.pool)
    if not one.compact:
        sys.exit(f"{args.model}: its head reads frames, so a batch encodes every file twice anyway")
    rec.predict_file(paths[0])  # warm-up: models loaded, first-call costs paid
    out: dict = {"clips": len(paths), "model": args.model, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    results = {}
    for name, stage in (("two passes", two), ("one pass", one), ("two passes again", two), ("one pass again", one)):
        rec.predictor.speech_stage = stage
        t0 = time.perf_counter()
        results[name] = rec.predict_batch(paths)
        out[f"{name} s"] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {out[f'{name} s']:.1f} s for {len(paths)} files ({out[f'{name} s'] / len(paths):.2f} s a file)",
              flush=True)
    a, b = results["two passes"], results["one pass"]
    out["same labels"] = all(x.label == y.label for x, y in zip(a, b))
    out["max probability difference"] = float(max(abs(x.probabilities[k] - y.probabilities[k])
                                                  for x, y in zip(a, b) for k in x.probabilities))
    best = {k: min(out[f"{k} s"], out[f"{k} again s"]) for k in ("two passes", "one pass")}
    out["speed-up"] = round(best["two passes"] / best["one pass"], 2)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    if not out["same labels"] or out["max probability difference"] > 1e-4:
        sys.exit("the two ways disagree")


if __name__ == "__main__":
    main()
