"""Corpus-scale simulation: transcribe -> features -> train on N synthetic utterances, and the
projected wall time for an 80k-clip corpus (the paper's AIHub 137 size) on 1, 4 and 16 machines.

The N clips are EmotionTTS clips, each copy with its own random gain (-6..+6 dB), speed
(0.9..1.1, resampled: tempo and pitch move together, as sox's ``speed``) and white or pink noise
(15..35 dB SNR), so no transcript-cache or feature-store entry repeats. Speaker, sentence and label
are the source clip's, so the recipe's speaker-sentence grid stays disjoint. Each stage is the
``koemo`` command a user runs, in its own process on a fresh cache (``<out>/cache``), timed and
measured (peak RSS from ``wait4``):

1. ``koemo transcribe`` (the recipe's ASR, whisper-base);
2. ``koemo features extract``: the speech encoder (every Whisper layer, one pass) and the text
   encoder on the human and the ASR transcripts;
3. ``koemo train``: the shipped recipe's head (linear, CR on whisper-base text), one seed, every
   fold of the 5 x 5 speaker-sentence grid.

A finished stage is recorded in ``<out>/stages.json`` and not rerun (``--fresh`` starts over), and
an interrupted one resumes from koemo's own caches (its time then covers only the rest; the
report says so). The projection scales each stage's seconds per clip linearly: transcription and
features split across machines (Ray actors, docs/scaling.md); one training run does not, but the
grid's (model, text, seed) units do. Writes ``<out>/corpus_sim.json`` and ``<out>/corpus_sim.md``.

    python benchmarks/corpus_sim.py --n 2000 --out /tmp/koemo-sim [--ray] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("transcribe", "features", "train")
TARGET_CLIPS = 80_000
MACHINES = (1, 4, 16)


def perturb(audio, rng):
    """A copy of ``audio`` (16 kHz float32) at a random speed, gain and noise level."""
    import numpy as np

    from koemo.asr.noise import mix_at_snr, pink_noise, white_noise

    speed = float(rng.uniform(0.9, 1.1))
    n_out = max(1, round(len(audio) / speed))
    out = np.interp(np.arange(n_out) * speed, np.arange(len(audio)), audio).astype(np.float32)
    out *= np.float32(10 ** (rng.uniform(-6.0, 6.0) / 20))
    noise = (white_noise if rng.random() < 0.5 else pink_noise)(len(out), rng)
    out = mix_at_snr(out, noise, float(rng.uniform(15.0, 35.0)))
    return np.clip(out, -1.0, 1.0)


def build(n: int, out: Path, seed: int, data_dir: str | None) -> Path:
    """Write ``n`` perturbed clips and their manifest (``<out>/manifest.csv``); existing clips are kept."""
    import numpy as np
    import soundfile as sf
    from tqdm import tqdm

    from koemo.cliutil import recipe_from
    from koemo.data.audio import SAMPLE_RATE, load_audio
    from koemo.data.manifest import Utterance, write_manifest
    from koemo.data.prepare import load_or_prepare
    from koemo.paths import atomic_path

    _, source = load_or_prepare(recipe_from("emotiontts", None), data_dir)
    clips = out / "audio"
    clips.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(source))  # a small N still spans the speakers
    rows = []
    for i in tqdm(range(n), desc="build clips", unit="clip"):
        src = source[order[i % len(source)]]
        path = clips / f"sim{i:06d}.wav"
        if not path.exists():
            rng = np.random.default_rng([seed, i])
            audio = perturb(load_audio(src.audio, start=src.start, end=src.end), rng)
            with atomic_path(path) as tmp:
                sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        rows.append(Utterance(id=f"sim{i:06d}", audio=str(path), label=src.label, text=src.text,
                              speaker=src.speaker, group=src.group, dataset="corpus-sim"))
    return write_manifest(out / "manifest.csv", rows)


def write_recipe(out: Path, manifest: Path) -> Path:
    """The shipped recipe (emotiontts.yaml) on the simulated manifest."""
    import yaml

    recipe = {"base": "emotiontts", "name": f"corpus-sim-{out.name}",
              "data": {"dataset": "manifest", "root": str(manifest), "label_set": "emotiontts4"},
              "eval": {"text_neutral": False, "seeds": 1}}
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def stage_commands(recipe: Path, out: Path, ray: bool) -> dict[str, list[list[str]]]:
    koemo = [sys.executable, "-m", "koemo"]
    ray_flag = ["--ray"] if ray else []
    r = ["-r", str(recipe)]
    return {
        "transcribe": [koemo + ["transcribe", *r, *ray_flag]],
        "features": [koemo + ["features", "extract", *r, "-e", "whisper-base-encoder", *ray_flag],
                     koemo + ["features", "extract", *r, "-e", "embeddinggemma-300m", "-t", "gold",
                              "-t", "asr:whisper-base", *ray_flag]],
        "train": [koemo + ["train", *r, "--seed", "0", "--out", str(out / "runs"), "--json"]],
    }


def run_stage(commands: list[list[str]], env: dict, log: Path) -> dict:
    """Run the commands one after another; wall seconds, peak RSS (MiB, largest process) and output."""
    t0 = time.perf_counter()
    peak_kib = 0
    outputs = []
    for argv in commands:
        with open(log, "ab") as err:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
            stdout = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            sys.exit(f"{' '.join(argv[2:4])} failed (exit {proc.returncode}); its log: {log}")
        peak_kib = max(peak_kib, usage.ru_maxrss)  # Linux: KiB; includes the process's own children
        outputs.append(stdout.decode("utf-8", "replace"))
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(peak_kib / 1024, 1),
            "output": outputs}


def store_bytes(cache: Path, n: int) -> dict:
    """Feature-store bytes per clip, speech and text (every file under <cache>/features)."""
    root = cache / "features"
    totals: dict[str, int] = {}
    for f in root.rglob("*") if root.exists() else []:
        if f.is_file():
            kind = "speech" if "whisper" in str(f.relative_to(root)).lower() else "text"
            totals[kind] = totals.get(kind, 0) + f.stat().st_size
    return {k: round(v / n) for k, v in sorted(totals.items())}


def project(stages: dict, n: int, grid_units: int, target: int = TARGET_CLIPS, machines=MACHINES) -> list[dict]:
    """Hours for ``target`` clips per machine count. Transcription and features split evenly over
    the machines; training: one run scales with the clips, and ``grid_units`` runs (a 5-seed grid's
    (model, text, seed) units) spread over the machines, whole units per machine."""
    scale = target / n
    rows = []
    for m in machines:
        prep = sum(stages[s]["seconds"] for s in ("transcribe", "features")) * scale / m
        one_run = stages["train"]["seconds"] * scale
        grid = one_run * -(-grid_units // m)
        rows.append({"machines": m, "transcribe_h": round(stages["transcribe"]["seconds"] * scale / m / 3600, 1),
                     "features_h": round(stages["features"]["seconds"] * scale / m / 3600, 1),
                     "preprocess_h": round(prep / 3600, 1), "one_training_run_h": round(one_run / 3600, 1),
                     "grid_h": round(grid / 3600, 1), "total_h": round((prep + grid) / 3600, 1)})
    return rows


def report(result: dict) -> str:
    n = result["n"]
    lines = [f"# Corpus-scale simulation: {n:,} utterances", "",
             f"- Command: `{result['command']}`", f"- Machine: {result['machine']}",
             f"- Audio: {result['audio_hours']:.2f} h ({result['mean_clip_s']:.2f} s a clip)", "",
             "| stage | wall | clips/s | s per clip | peak RSS |", "|:--|--:|--:|--:|--:|"]
    for name in STAGES:
        s = result["stages"][name]
        resumed = " (resumed)" if s.get("resumed") else ""
        lines.append(f"| {name}{resumed} | {s['seconds'] / 60:.1f} min | {n / s['seconds']:.2f} | "
                     f"{s['seconds'] / n:.3f} | {s['peak_rss_mib']:,.0f} MiB |")
    fb = result["feature_bytes_per_clip"]
    lines += ["", "Feature store per clip: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in fb.items())
              + f"; {TARGET_CLIPS:,} clips: {sum(fb.values()) * TARGET_CLIPS / 2**30:.1f} GiB.", "",
              (f"Projected for {TARGET_CLIPS:,} clips (hours; training: one run, and the 5-seed grid's "
               f"{result['grid_units']} units):"), "",
              "| machines | transcribe | features | one training run | grid | total |", "|--:|--:|--:|--:|--:|--:|"]
    for p in result["projection"]:
        lines.append(f"| {p['machines']} | {p['transcribe_h']} | {p['features_h']} | {p['one_training_run_h']} | "
                     f"{p['grid_h']} | {p['total_h']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="Utterances to simulate.")
    ap.add_argument("--out", default="/tmp/koemo-corpus-sim", help="Work directory (clips, cache, report).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="Dataset root (default: $KOEMO_DATA_DIR or ../shared/data).")
    ap.add_argument("--ray", action="store_true", help="Transcription and features on a local Ray cluster.")
    ap.add_argument("--grid-units", type=int, default=15,
                    help="Training runs of a full grid, for the projection (default 15: the shipped recipe's "
                         "3 (model, text) jobs x 5 seeds).")
    ap.add_argument("--fresh", action="store_true", help="Delete <out> first.")
    args = ap.parse_args()

    from koemo.paths import models_dir

    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KOEMO_CACHE": str(out / "cache"), "KOEMO_MODELS": str(models_dir())}
    if args.data_dir:
        env["KOEMO_DATA_DIR"] = args.data_dir
    done_file = out / "stages.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else {}
    if done.get("n") not in (None, args.n):
        sys.exit(f"{out} holds a run with --n {done['n']}; use --fresh or another --out")
    done["n"] = args.n

    t0 = time.perf_counter()
    manifest = build(args.n, out, args.seed, args.data_dir)
    build_s = time.perf_counter() - t0
    recipe = write_recipe(out, manifest)
    commands = stage_commands(recipe, out, args.ray)
    for name in STAGES:
        if name in done:
            print(f"{name}: done before ({done[name]['seconds']} s)")
            continue
        started_before = (out / f"{name}.started").exists()
        (out / f"{name}.started").touch()
        print(f"{name}: {' ; '.join(' '.join(c[2:]) for c in commands[name])}", flush=True)
        done[name] = {**run_stage(commands[name], env, out / f"{name}.log"), "resumed": started_before}
        done_file.write_text(json.dumps(done, indent=1))
        print(f"{name}: {done[name]['seconds']} s, peak RSS {done[name]['peak_rss_mib']} MiB", flush=True)

    import soundfile as sf

    seconds = sum(sf.info(str(p)).duration for p in (out / "audio").glob("sim*.wav"))
    train_out = json.loads(done["train"]["output"][0] or "{}") if done["train"]["output"] else {}
    result = {
        "n": args.n, "command": "python benchmarks/corpus_sim.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}", "build_seconds": round(build_s, 1),
        "audio_hours": seconds / 3600, "mean_clip_s": seconds / args.n,
        "stages": {k: {kk: vv for kk, vv in done[k].items() if kk != "output"} for k in STAGES},
        "feature_bytes_per_clip": store_bytes(out / "cache", args.n), "grid_units": args.grid_units,
        "train_summary": train_out,
    }
    result["projection"] = project(result["stages"], args.n, args.grid_units)
    (out / "corpus_sim.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    (out / "corpus_sim.md").write_text(report(result), encoding="utf-8")
    print(report(result))


if __name__ == "__main__":
    main()
