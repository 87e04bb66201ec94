"""Which Whisper layers survive a new recording channel when a clip comes alone? A probe.

    python benchmarks/layer_channel_probe.py            # the table in docs/voice.md
    python benchmarks/layer_channel_probe.py --json out.json

A lone clip (no session) is standardised by the training corpus's statistics, so a new channel
moves its input; a folder of clips is standardised by its own, which absorbs the channel
(``benchmarks/channel_shift.py``, ``benchmarks/session_mix.py``). The front end and the first
block of Whisper sit closest to the waveform. This trains a logistic regression (scikit-learn,
L2, C = 0.1) on the text-neutral protocol's training speakers, audio only, on the recipe's
speech statistics with some layers left out, and scores the 100 unheard test clips under
``channel_shift.py``'s channels, each clip alone (corpus statistics) and all together (one
folder). Training views: each speaker's statistics and the mixed-group copy (the recipe's), plus
(``+ corpus``) a copy normalised by the corpus statistics, the input a lone clip gets. One fold,
deterministic: no seed spread; a probe, not the recipe's head (read differences, not levels).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYER_SETS = {"all 7": list(range(7)), "blocks 1-6": list(range(1, 7)),
              "blocks 2-6 (front end and block 1 left out)": list(range(2, 7)), "blocks 3-6": list(range(3, 7))}


def main() -> None:
    from textneutral import arguments, test_set

    args = arguments(__doc__)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from channel_shift import CHANNELS, Channel
    from koemo.fusion.inputs import Moments, Normaliser, group_views
    from koemo.training.features import mixed_groups

    args.seeds = 1  # the protocol has one fold; its test clips are those of seed 0's fold bundle
    ts = test_set(args)
    recipe, frames, utts, test = ts.recipe, ts.frames, ts.utts, ts.test
    enc = recipe.encoders
    norm = Normaliser.fit(enc.normalise, Moments.sum(Moments.of(a) for a in frames.values()), enc.normalise_min_clips)
    train = [u for u in utts if u.id not in ts.test_ids]
    speaker = {u.id: u.speaker for u in train}

    def stats(table: dict, clips: list, groups: dict) -> np.ndarray:
        """``[clips, layers, 2 x dim]`` statistics of ``clips`` standardised by ``groups``."""
        v = group_views([{u.id: table[u.id] for u in clips}], groups, "stats", norm)[0]
        return np.stack([np.asarray(v[u.id], np.float32)[0] for u in clips])

    views = {"speaker": stats(frames, train, speaker),
             "mixed": stats(frames, train, mixed_groups(speaker, recipe.augment.mixed_groups or 3, recipe.augment.seed)),
             "corpus": stats(frames, train, {u.id: u.id for u in train})}
    y, y_test = np.array([u.label for u in train]), np.array([u.label for u in test])
    shifted_sets = {}
    for channel in CHANNELS:
        shifted = dict(frames)
        if channel != "clean":
            shifted.update(ts.store.speech(enc.speech, test, **ts.settings, transform=Channel(channel, tuple(utts))))
        shifted_sets[channel] = {"lone clip": stats(shifted, test, {u.id: u.id for u in test}),
                                 "folder": stats(shifted, test, {u.id: "<folder>" for u in test})}
    out: dict = {}
    for training in (("speaker", "mixed"), ("speaker", "mixed", "corpus")):
        for name, layers in LAYER_SETS.items():
            x = np.vstack([views[v][:, layers].reshape(len(train), -1) for v in training])
            scale = StandardScaler().fit(x)
            model = LogisticRegression(C=0.1, max_iter=5000).fit(scale.transform(x), np.concatenate([y] * len(training)))
            key = f"{' + '.join(training)} | {name}"
            out[key] = {ch: {g: float(f1_score(y_test, model.predict(scale.transform(s[:, layers].reshape(len(test), -1))),
                                               average="weighted")) for g, s in sets.items()}
                        for ch, sets in shifted_sets.items()}
            print(key, {ch: {g: round(v, 3) for g, v in r.items()} for ch, r in out[key].items()}, flush=True)
    print("\n| training views | layers | " + " | ".join(f"{c}: lone / folder" for c in CHANNELS) + " |\n|---|---|"
          + "---:|" * len(CHANNELS))
    for key, row in out.items():
        views_name, layers = key.split(" | ")
        print(f"| {views_name} | {layers} | " + " | ".join(f"{row[c]['lone clip']:.3f} / {row[c]['folder']:.3f}"
                                                         for c in CHANNELS) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
