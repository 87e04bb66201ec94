"""Real-time factor of each speech recogniser on this machine, and what Whisper's guards change.

    python benchmarks/bench_asr.py [--clips 5] [--backends whisper-base vosk-ko]
    python benchmarks/bench_asr.py --guards [--clips 43] [--snr 0]

RTF = seconds spent transcribing / seconds of audio (below 1 is faster than real time). Wall RTF
depends on what else the machine is doing, so CPU RTF (process CPU seconds, all threads, per
audio second) and the load average are printed too. Model loading is timed apart, and one
warm-up clip is transcribed before timing. Clips are EmotionTTS clips, one per speaker.

``--guards`` transcribes every k-th EmotionTTS clip under babble noise with ``whisper-base``
(VAD, no-speech / log-prob / compression-ratio thresholds with temperature fallback, no
conditioning on previous text) and ``whisper-base-noguards``, through the transcript cache
(the entries are the ones a full ``koemo transcribe`` run uses), and counts hallucinations.
"""

from __future__ import annotations

import argparse
import os
import time


def repeats_a_phrase(text: str, times: int = 3) -> bool:
    """True when some 1-4 word phrase occurs ``times`` times in a row (a decoding loop)."""
    words = text.split()
    for n in range(1, 5):
        for i in range(len(words) - n * times + 1):
            if all(words[i + k * n : i + (k + 1) * n] == words[i : i + n] for k in range(1, times)):
                return True
    return False


def guards(clips: int, snr: float) -> None:
    from koemo.asr.metrics import normalize, score
    from koemo.asr.transcribe import evenly_spaced, transcribe_utterances
    from koemo.config import Recipe
    from koemo.data.prepare import load_or_prepare

    _, utts = load_or_prepare(Recipe())
    by_id = sorted(utts, key=lambda u: u.id)
    only = evenly_spaced(by_id, clips)
    subset = [u for u in by_id if u.id in only]
    print(f"# {len(subset)} EmotionTTS clips (evenly spaced by id), babble at {snr:g} dB")
    print("| backend | CER % | WER % | sWER % | empty | phrase loops | longer than 1.5x ref | s/clip |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("whisper-base", "whisper-base-noguards"):
        t0 = time.perf_counter()
        report = transcribe_utterances(utts, name, "babble", snr, only=only)
        per_clip = (time.perf_counter() - t0) / max(1, report.computed)
        refs = [u.text for u in subset]
        hyps = [report.texts.get(u.id, "") for u in subset]
        s = score(refs, hyps)
        loops = sum(repeats_a_phrase(normalize(h)) for h in hyps)
        long_ = sum(len(normalize(h)) > 1.5 * len(normalize(r)) for r, h in zip(refs, hyps))
        timing = f"{per_clip:.1f}" if report.computed else "cached"
        print(f"| {name} | {100 * s.cer:.1f} | {100 * s.wer:.1f} | {100 * s.swer:.1f} | {s.empty_hypotheses} "
              f"| {loops} | {long_} | {timing} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=None, help="EmotionTTS clips (default 5 for RTF, 43 for --guards)")
    parser.add_argument("--backends", nargs="+", default=["whisper-base", "vosk-ko"])
    parser.add_argument("--guards", action="store_true", help="compare whisper-base with and without its guards under babble")
    parser.add_argument("--snr", type=float, default=0.0, help="babble SNR in dB for --guards")
    args = parser.parse_args()
    if args.guards:
        guards(args.clips or 43, args.snr)
        return
    args.clips = args.clips or 5

    from koemo.asr import make_backend
    from koemo.asr.metrics import score
    from koemo.config import Recipe
    from koemo.data.audio import SAMPLE_RATE, load_audio
    from koemo.data.prepare import load_or_prepare

    _, utts = load_or_prepare(Recipe())
    one_per_speaker = list({u.speaker: u for u in utts}.values())[: args.clips]
    clips = [(u, load_audio(u.audio)) for u in one_per_speaker]
    audio_s = sum(len(a) for _, a in clips) / SAMPLE_RATE

    rows = []
    for name in args.backends:
        t0 = time.perf_counter()
        backend = make_backend(name)
        load_s = time.perf_counter() - t0
        backend.transcribe(clips[0][1])  # warm-up
        wall0, cpu0 = time.perf_counter(), time.process_time()
        texts = [backend.transcribe(audio) for _, audio in clips]
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        cer = score([u.text for u, _ in clips], texts).cer
        rows.append((name, len(clips), audio_s, load_s, wall / audio_s, cpu / audio_s, cer))

    print(f"# {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| backend | clips | audio s | load s | wall RTF | CPU RTF | CER % |")
    print("|---|---|---|---|---|---|---|")
    for name, n, a, load, rtf, cpu_rtf, cer in rows:
        print(f"| {name} | {n} | {a:.1f} | {load:.1f} | {rtf:.3f} | {cpu_rtf:.3f} | {100 * cer:.1f} |")


if __name__ == "__main__":
    main()
