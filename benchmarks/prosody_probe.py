"""Do prosodic functionals add to Whisper's frames? A logistic-regression probe, both protocols.

    python benchmarks/prosody_probe.py                 # the tables in docs/voice.md ("Prosody")
    python benchmarks/prosody_probe.py --json out.json

Features (from the feature store; extracted on the first run): the recipe's speech input (every
Whisper layer, frames standardised by a group's statistics, mean + std over time) and the 41
functionals of ``koemo.encoders.prosody`` (standardised by the same groups), side by side with
each block standardised on the training clips; the prosody block multiplied by ``w`` (0 = Whisper
alone). Logistic regression (scikit-learn, L2, C = 0.1), audio only (no text).

- Text-neutral protocol (train the emotional-script speakers, test the plain-script ones), the
  training set doubled by a copy normalised by random groups of three speakers (the recipe's
  ``augment.mixed_groups: 3``); the test clips grouped three ways: by speaker, all together
  (a folder of several speakers), each alone (the training corpus's statistics).
- Main protocol: the 5 x 5 speaker-sentence grid of seeds 0-2, speaker statistics, predictions
  pooled over the 25 folds of a seed.

Weighted F1. A probe is not the recipe's head: read the differences, not the levels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WEIGHTS = (0.0, 1.0, 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the main protocol's grid")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from koemo.config import Recipe, load_config, resolve_recipe
    from koemo.data.prepare import load_or_prepare
    from koemo.data.splits import make_folds
    from koemo.encoders.prosody import add_prosody
    from koemo.fusion.inputs import Moments, Normaliser, group_views
    from koemo.training.features import mixed_groups, store_for

    # the whole 30 s pass, as the tables in docs/voice.md were measured (before the merged window)
    recipe = load_config(Recipe, resolve_recipe("emotiontts-30s"))
    _, utts = load_or_prepare(recipe)
    store = store_for(recipe)
    frames = add_prosody(store, store.speech("whisper-base-encoder", utts, layer="all"), utts)
    ids = [u.id for u in utts]
    label = np.array([u.label for u in utts])
    speaker = {u.id: u.speaker for u in utts}
    corpus = Moments.sum(Moments.of(a) for a in frames.values())
    norm = Normaliser.fit("speaker", corpus, 3)

    def blocks(groups: dict) -> tuple[np.ndarray, np.ndarray]:
        """(Whisper statistics [N, 7 * 1024], functionals [N, 41]) under ``groups``."""
        v = group_views([frames], groups, "stats", norm)[0]
        x = np.stack([v[u][0] for u in ids])  # [N, 8, 1024]
        return x[:, :7].reshape(len(ids), -1), x[:, 7, :41]

    def fit_predict(train_sets, test, w: float) -> np.ndarray:
        whisper = StandardScaler().fit(train_sets[0][0])
        prosody = StandardScaler().fit(train_sets[0][1])

        def join(a, b):
            return np.hstack([whisper.transform(a), w * prosody.transform(b)])

        x = np.vstack([join(a, b) for a, b, _ in train_sets])
        y = np.concatenate([lab for _, _, lab in train_sets])
        return LogisticRegression(C=0.1, max_iter=5000).fit(x, y).predict(join(*test))

    out: dict = {"text-neutral": {}, "main": {}}
    (fold,) = make_folds(utts, "text-neutral", valid="none")
    train, test = np.isin(ids, fold.train), np.isin(ids, fold.test)
    mixed = blocks(mixed_groups(speaker, 3, 0))
    by_speaker = blocks(speaker)
    groupings = {"speaker": speaker,
                 "folder": {u: speaker[u] if train[i] else "<test>" for i, u in enumerate(ids)},
                 "lone clip": {u: speaker[u] if train[i] else u for i, u in enumerate(ids)}}
    for name, groups in groupings.items():
        a, b = blocks(groups)
        sets = [(by_speaker[0][train], by_speaker[1][train], label[train]), (mixed[0][train], mixed[1][train], label[train])]
        for w in WEIGHTS:
            pred = fit_predict(sets, (a[test], b[test]), w)
            out["text-neutral"].setdefault(f"w={w:g}", {})[name] = round(float(f1_score(label[test], pred, average="weighted")), 3)
    for seed in range(args.seeds):
        folds = make_folds(utts, "speaker-sentence", folds=5, valid="none", seed=seed)
        for w in WEIGHTS:
            truth, pred = [], []
            for f in folds:
                tr, te = np.isin(ids, f.train), np.isin(ids, f.test)
                sets = [(by_speaker[0][tr], by_speaker[1][tr], label[tr])]
                pred += list(fit_predict(sets, (by_speaker[0][te], by_speaker[1][te]), w))
                truth += list(label[te])
            out["main"].setdefault(f"w={w:g}", []).append(round(float(f1_score(truth, pred, average="weighted")), 3))
        print(f"main protocol, seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in out["main"].items()), flush=True)
    print("\n| prosody block | text-neutral: by speaker | folder | lone clip | main protocol, seeds " +
          ", ".join(map(str, range(args.seeds))) + " |\n|---|---:|---:|---:|---:|")
    for key, row in out["text-neutral"].items():
        print(f"| {key} | {row['speaker']:.3f} | {row['folder']:.3f} | {row['lone clip']:.3f} | "
              + " / ".join(f"{v:.3f}" for v in out["main"][key]) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
