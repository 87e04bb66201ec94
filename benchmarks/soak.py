"""Soak test: ``koemo serve`` under steady mixed traffic for minutes, watching errors and memory.

Starts the service (a subprocess on 127.0.0.1, API keys on) and runs ``--clients`` concurrent
clients (asyncio + httpx + websockets) for ``--minutes``. Each client loops over a mix of:

- good uploads: real EmotionTTS clips (multipart, raw body or base64 JSON), expecting 200;
- bad uploads: text named .wav, a truncated WAV, an empty body, all-silent audio, a wrong content
  type, no API key, a wrong key, expecting the documented 4xx (401/403/415/422);
- streams: two real clips joined with 1.5 s of silence sent to ``/v1/stream`` as 16 kHz PCM16 in
  100 ms chunks at real-time pace, expecting one result per utterance (partials counted) and an
  end message; a stream refused because ``max_streams`` are open (1013) is counted, not failed.

It reports latency p50/p95 per kind, every status seen, the number of 5xx answers and failed
streams (should be 0), and the server's resident memory (``/proc/PID/status`` VmRSS) after the
warm-up, at the end and at its peak. Usage::

    python benchmarks/soak.py [--minutes 10] [--clients 8] [--model BUNDLE] [--out soak.json]

Without ``--model`` it serves the bundle ``make demo`` trains (``$KOEMO_CACHE/bundles/default``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
from bench_serving import (  # this folder is on sys.path when run as a script
    free_port,
    wait_until_healthy,
)

BAD = ("text-as-wav", "truncated-wav", "empty", "silent", "wrong-type", "no-key", "wrong-key")
EXPECTED = {"text-as-wav": 415, "truncated-wav": 422, "empty": 422, "silent": 422, "wrong-type": 415,
            "no-key": 401, "wrong-key": 403}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def clips(n: int, seed: int) -> list[Path]:
    from koemo.data.loaders import LOADERS
    from koemo.errors import SkipLog
    from koemo.paths import data_dir

    utts = LOADERS.get("emotiontts")(data_dir() / "emotiontts_open_db", SkipLog())
    rng = random.Random(seed)
    return [Path(u.audio) for u in rng.sample(utts, n)]


def joined_pcm16(a: Path, b: Path) -> bytes:
    from koemo.data.audio import load_audio

    pause = np.zeros(24000, np.float32)
    audio = np.concatenate([pause[:8000], load_audio(a), pause, load_audio(b), pause])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def bad_body(kind: str, clip: bytes) -> tuple[dict, dict]:
    """(httpx request kwargs, extra headers) for a bad upload of ``kind``."""
    if kind == "text-as-wav":
        return {"files": {"file": ("notes.wav", "이건 오디오가 아니다".encode(), "audio/wav")}}, {}
    if kind == "truncated-wav":
        return {"files": {"file": ("cut.wav", clip[: len(clip) // 3], "audio/wav")}}, {}
    if kind == "empty":
        return {"content": b"", "headers": {"content-type": "audio/wav"}}, {}
    if kind == "silent":
        buf = io.BytesIO()
        sf.write(buf, np.zeros(32000, np.float32), 16000, format="WAV")
        return {"files": {"file": ("silent.wav", buf.getvalue(), "audio/wav")}}, {}
    if kind == "wrong-type":
        return {"content": b"hello", "headers": {"content-type": "text/plain"}}, {}
    if kind == "no-key":
        return {"files": {"file": ("a.wav", clip, "audio/wav")}}, {"drop-key": True}
    if kind == "wrong-key":
        return {"files": {"file": ("a.wav", clip, "audio/wav")}}, {"key": "not-a-real-key"}
    raise ValueError(kind)


class Soak:
    def __init__(self, url: str, key: str, clip_bytes: list[bytes], streams: list[bytes], seed: int):
        self.url, self.key = url, key
        self.clip_bytes, self.streams = clip_bytes, streams
        self.rng = random.Random(seed)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.unexpected: list[str] = []
        self.stream_delays: list[float] = []
        self.stream_failures = 0
        self.partials = 0

    async def upload(self, client, kind: str) -> None:
        import httpx

        clip = self.rng.choice(self.clip_bytes)
        headers = {"Authorization": f"Bearer {self.key}"}
        if kind == "good":
            how = self.rng.choice(("multipart", "raw", "json"))
            if how == "multipart":
                kwargs = {"files": {"file": ("clip.wav", clip, "audio/wav")}}
            elif how == "raw":
                kwargs = {"content": clip, "headers": {"content-type": "audio/wav"}}
            else:
                kwargs = {"json": {"audio_base64": base64.b64encode(clip).decode(), "filename": "clip.wav"}}
            expected = 200
        else:
            kwargs, extra = bad_body(kind, clip)
            if extra.get("drop-key"):
                headers = {}
            elif "key" in extra:
                headers = {"X-API-Key": extra["key"]}
            expected = EXPECTED[kind]
        kwargs["headers"] = {**headers, **kwargs.get("headers", {})}
        t0 = time.perf_counter()
        try:
            r = await client.post(self.url + "/v1/predict", **kwargs)
        except httpx.HTTPError as e:
            self.status[kind][-1] += 1
            self.unexpected.append(f"{kind}: {type(e).__name__} {e}")
            return
        self.latency[kind].append(time.perf_counter() - t0)
        self.status[kind][r.status_code] += 1
        if r.status_code != expected:
            self.unexpected.append(f"{kind}: {r.status_code} (expected {expected}) {r.text[:200]}")
        if "x-request-id" not in r.headers:
            self.unexpected.append(f"{kind}: no X-Request-ID")

    async def stream(self) -> None:
        import websockets

        pcm = self.rng.choice(self.streams)
        ws_url = self.url.replace("http://", "ws://") + "/v1/stream?format=pcm16&sample_rate=16000"
        chunk = 3200  # 100 ms of 16 kHz PCM16
        t0 = time.perf_counter()
        utterances = 0
        try:
            async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {self.key}"},
                                          max_size=2**22, open_timeout=60) as ws:
                ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if ready["type"] == "error" and "streams are open" in ready["problem"]:
                    self.status["stream"][1013] += 1  # the documented refusal when max_streams are open
                    await asyncio.sleep(1)
                    return
                assert ready["type"] == "ready", ready
                start = time.perf_counter()

                async def sender():
                    for i in range(0, len(pcm), chunk):
                        await ws.send(pcm[i:i + chunk])
                        # real-time pace: the i-th chunk leaves at its time in the stream
                        await asyncio.sleep(max(0.0, start + (i + chunk) / 32000 - time.perf_counter()))
                    await ws.send(json.dumps({"type": "end"}))

                send_task = asyncio.create_task(sender())
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
                    if msg["type"] == "utterance":
                        utterances += 1
                        self.stream_delays.append(float(msg["latency_s"]))
                    elif msg["type"] == "partial":
                        self.partials += 1
                    elif msg["type"] == "end":
                        break
                    else:
                        raise RuntimeError(f"stream message {msg}")
                await send_task
        except Exception as e:  # noqa: BLE001 - a soak counts failures of any kind
            self.stream_failures += 1
            self.unexpected.append(f"stream: {type(e).__name__} {str(e)[:200]}")
            return
        self.latency["stream"].append(time.perf_counter() - t0)
        self.status["stream"][200 if utterances == 2 else 0] += 1
        if utterances != 2:
            self.unexpected.append(f"stream: {utterances} utterances (expected 2)")

    async def client(self, deadline: float, weights: dict[str, float]) -> None:
        import httpx

        kinds, w = zip(*weights.items())
        async with httpx.AsyncClient(timeout=300) as client:
            while time.monotonic() < deadline:
                kind = self.rng.choices(kinds, w)[0]
                if kind == "stream":
                    await self.stream()
                elif kind == "bad":
                    await self.upload(client, self.rng.choice(BAD))
                else:
                    await self.upload(client, "good")


async def run(args, url: str, key: str, pid: int) -> dict:
    import httpx

    paths = clips(24, args.seed)
    clip_bytes = [p.read_bytes() for p in paths]
    streams = [joined_pcm16(paths[i], paths[i + 1]) for i in range(0, 8, 2)]
    soak = Soak(url, key, clip_bytes, streams, args.seed)
    async with httpx.AsyncClient(timeout=300) as c:  # warm-up: every model path once
        for _ in range(2):
            r = await c.post(url + "/v1/predict", files={"file": ("w.wav", clip_bytes[0], "audio/wav")},
                             headers={"Authorization": f"Bearer {key}"})
            r.raise_for_status()
    await soak.stream()
    soak.latency.clear()
    soak.status.clear()
    soak.stream_delays.clear()
    soak.partials = 0
    rss = [(0.0, rss_mb(pid))]
    t_start = time.monotonic()
    deadline = t_start + args.minutes * 60
    weights = {"good": args.good, "bad": args.bad, "stream": args.streams}

    async def watch():
        while time.monotonic() < deadline:
            await asyncio.sleep(10)
            rss.append((round(time.monotonic() - t_start, 1), rss_mb(pid)))

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(soak.client(deadline, weights) for _ in range(args.clients)))
    watcher.cancel()
    rss.append((round(time.monotonic() - t_start, 1), rss_mb(pid)))
    server_errors = sum(n for st in soak.status.values() for code, n in st.items() if 500 <= code < 600)
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "wall_s": round(time.monotonic() - t_start, 1),
        "requests": {k: sum(v.values()) for k, v in soak.status.items()},
        "status": {k: dict(sorted(v.items())) for k, v in soak.status.items()},
        "latency_s": {k: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)} for k, v in soak.latency.items()},
        "stream_delay_s": {"p50": pct(soak.stream_delays, 50), "p95": pct(soak.stream_delays, 95),
                           "n": len(soak.stream_delays)},
        "server_errors_5xx": server_errors,
        "stream_failures": soak.stream_failures,
        "stream_partials": soak.partials,
        "unexpected": soak.unexpected[:50],
        "unexpected_count": len(soak.unexpected),
        "rss_mb": {"after_warmup": round(rss[0][1], 1),
                   "after_1min": round(next((v for t, v in rss if t >= 60), rss[-1][1]), 1),
                   "end": round(rss[-1][1], 1),
                   "peak": round(max(v for _, v in rss), 1),
                   "growth_pct": round(100 * (rss[-1][1] / rss[0][1] - 1), 2)},
        "rss_trace": rss,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--model", help="bundle directory (default: the one make demo trains)")
    p.add_argument("--good", type=float, default=0.55, help="share of good uploads")
    p.add_argument("--bad", type=float, default=0.30, help="share of bad uploads")
    p.add_argument("--streams", type=float, default=0.15, help="share of streams")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the summary JSON here too")
    args = p.parse_args()

    from koemo.serving.security import add_key

    tmp = Path(tempfile.mkdtemp(prefix="koemo-soak-"))
    keys = tmp / "keys.txt"
    key = add_key(keys, "soak")
    port = free_port()
    cmd = [sys.executable, "-m", "koemo", "serve", "--port", str(port), "--api-keys", str(keys), "--rate-limit", "0"]
    if args.model:
        cmd += ["--model", args.model]
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        startup = wait_until_healthy(server, url, every=0.5)
        if startup is None:
            print((tmp / "server.log").read_text()[-3000:], file=sys.stderr)
            return 1
        startup = round(startup, 1)
        summary = asyncio.run(run(args, url, key, server.pid))
        summary["startup_s"] = startup
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    summary["server_log_lines"] = sum(1 for _ in open(tmp / "server.log", encoding="utf-8", errors="replace"))
    text = json.dumps({k: v for k, v in summary.items() if k != "rss_trace"}, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    ok = summary["server_errors_5xx"] == 0 and summary["stream_failures"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
