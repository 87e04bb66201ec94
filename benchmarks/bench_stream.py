"""Delay from the end of an utterance to its result on ``/v1/stream``, streamed in real time.

Joins ``--clips`` real EmotionTTS clips of 3-5 s with ``--gap`` seconds of silence and sends the
recording as 16 kHz PCM16 in 100 ms chunks at the pace of the audio (as a microphone would) over a
WebSocket. For each utterance it prints:

- ``first``: wall time from sending the chunk holding the utterance's end (as VAD reports it) to
  the first answer for it: its ``partial`` (computed during the pause, ``early=1``) when the pause
  lasted, else its result: what a user waits after they stop speaking;
- ``delay``: the same to the utterance's final result (sent when VAD closes it);
- ``vad``: the part VAD waits by design (``closed_at - end``: ~1 s of silence must follow, since a
  pause under 0.8 s between padded utterances joins them);
- ``server``: the service's part (``latency_s``: from receiving the closing audio to sending the
  result: queueing + ASR + encoders + fusion).

Usage::

    python benchmarks/bench_stream.py [--url ws://127.0.0.1:8000] [--key KEY] [--model BUNDLE]
                                      [--clips 6] [--gap 1.5] [--merge-gap 0.8] [--early 1]

Without ``--url`` the service runs in-process (uvicorn on a free loopback port) with ``--model``
(default: the bundle ``make demo`` trains). Loops are bounded by the recording's length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def recording(clips: int, gap: float, lo: float = 3.0, hi: float = 5.0):
    """``clips`` EmotionTTS clips of lo-hi seconds (different speakers first), joined by silences."""
    from koemo.data.audio import SAMPLE_RATE, load_audio
    from koemo.data.loaders import LOADERS
    from koemo.errors import SkipLog
    from koemo.paths import data_dir

    utts = LOADERS.get("emotiontts")(data_dir() / "emotiontts_open_db", SkipLog())
    pool = sorted((u for u in utts if lo <= u.duration <= hi), key=lambda u: u.id)
    picked = []
    for u in pool:  # one per speaker first, then any
        if u.speaker not in {p.speaker for p in picked}:
            picked.append(u)
    picked = picked[:clips] + [u for u in pool if u not in picked][: max(0, clips - len(picked))]
    silence = np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32)
    parts = [silence]
    for u in picked:
        parts += [load_audio(u.audio), silence]
    return np.concatenate(parts), picked


def serve_in_process(model: Path | None, asr: str | None):
    import uvicorn

    from koemo.serving.app import create_app
    from koemo.serving.limits import Limits
    from koemo.serving.loader import load_predictor

    predictor = load_predictor(model, asr=asr, limits=Limits())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    return f"ws://127.0.0.1:{port}", predictor


async def stream(url: str, audio: np.ndarray, key: str | None, chunk_s: float = 0.1, pace: bool = True, query: str = ""):
    """Send ``audio`` in real time; return [(utterance message, delay s)] and the end message."""
    import websockets

    step = int(chunk_s * 16000)
    sent_at: list[float] = []  # wall time each chunk was sent
    results, ending, partials = [], {}, {}
    protocols = ["koemo"] + ([f"koemo.key.{key}"] if key else [])
    async with websockets.connect(url + "/v1/stream?format=pcm16&sample_rate=16000" + query, subprotocols=protocols,
                                  max_size=2**20) as ws:
        ready = json.loads(await ws.recv())
        if ready["type"] != "ready":
            raise SystemExit(f"the service refused the stream: {ready}")

        async def receive():
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] in ("utterance", "partial"):
                    k = min(int(msg["end"] / chunk_s), len(sent_at) - 1)  # the chunk holding the end
                    delay = time.perf_counter() - sent_at[k]
                    if msg["type"] == "partial":
                        partials[msg["index"]] = (msg, delay)
                    else:
                        results.append((msg, delay))
                elif msg["type"] == "error":
                    print("error:", msg, file=sys.stderr)
                elif msg["type"] == "end":
                    ending.update(msg)
                    return

        reader = asyncio.create_task(receive())
        t0 = time.perf_counter()
        for k, i in enumerate(range(0, len(audio), step)):
            await asyncio.sleep(max(0.0, t0 + k * chunk_s - time.perf_counter()) if pace else 0)
            pcm = (np.clip(audio[i : i + step], -1, 1) * 32767).astype("<i2").tobytes()
            sent_at.append(time.perf_counter())
            await ws.send(pcm)
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(reader, 120)
    # the first answer for each utterance: its partial when one came with the same span
    firsts = []
    for msg, delay in results:
        early = partials.get(msg["index"])
        same = early is not None and (early[0]["start"], early[0]["end"]) == (msg["start"], msg["end"])
        firsts.append(min(delay, early[1]) if same else delay)
    return list(zip(results, firsts)), ending


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service, e.g. ws://127.0.0.1:8000 (default: one in-process)")
    ap.add_argument("--key", help="API key, sent as the WebSocket subprotocol koemo.key.KEY")
    ap.add_argument("--model", type=Path, help="bundle for the in-process service (default: make demo's)")
    ap.add_argument("--asr", default=None)
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--gap", type=float, default=1.5, help="seconds of silence between the clips")
    ap.add_argument("--merge-gap", type=float, help="the stream's merge_gap (default: the service's, 0.8 s)")
    ap.add_argument("--early", type=int, default=1, choices=(0, 1),
                    help="1: the service computes each result during the pause and sends it as a partial")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    audio, picked = recording(args.clips, args.gap)
    url, predictor = (args.url, None) if args.url else serve_in_process(args.model, args.asr)
    print(f"{len(picked)} clips ({', '.join(Path(u.audio).name for u in picked)}), {len(audio) / 16000:.1f} s, "
          f"streamed in real time to {url}", file=sys.stderr)
    # warm-up (the first prediction loads and compiles lazily): one utterance, not measured
    asyncio.run(stream(url.rstrip("/"), audio[: int((args.gap + picked[0].duration + 1.2) * 16000)], args.key, pace=False))
    query = f"&merge_gap={args.merge_gap:g}" if args.merge_gap is not None else ""
    query += f"&early={args.early}"
    results, ending = asyncio.run(stream(url.rstrip("/"), audio, args.key, query=query))
    rows = []
    for (msg, delay), first in results:
        row = {"start": msg["start"], "end": msg["end"], "seconds": round(msg["end"] - msg["start"], 2),
               "first": round(first, 3), "delay": round(delay, 3), "vad": round(msg["closed_at"] - msg["end"], 3),
               "server": msg["latency_s"], "label": msg["label"], "transcript": msg["transcript"]}
        rows.append(row)
        print(f"{row['start']:6.2f}-{row['end']:6.2f} s ({row['seconds']:.1f} s): first {row['first']:.2f} s, delay {row['delay']:.2f} s "
              f"= vad {row['vad']:.2f} + server {row['server']:.2f} (+ transport) · {row['label']} · {row['transcript']}")
    if predictor is not None:  # the same utterances through predict() alone, one after another
        for row in rows:
            t = time.perf_counter()
            predictor.predict(audio[round(row["start"] * 16000) : round(row["end"] * 16000)])
            row["predict_alone"] = round(time.perf_counter() - t, 3)
        print("predict() alone on the same utterances: " + ", ".join(f"{r['predict_alone']:.2f}" for r in rows) + " s")
    summary = {k: {"p50": round(pct([r[k] for r in rows], 50), 3), "max": round(max(r[k] for r in rows), 3)}
               for k in ("first", "delay", "vad", "server", "predict_alone") if rows and k in rows[0]}
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{len(rows)} utterances (end message: {ending}; load average {load}); " +
          "; ".join(f"{k} p50 {v['p50']:.2f} s, max {v['max']:.2f} s" for k, v in summary.items()))
    if args.json:
        args.json.write_text(json.dumps({"utterances": rows, "summary": summary, "load": load}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
