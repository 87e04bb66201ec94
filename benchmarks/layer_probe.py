"""Which Whisper layer carries emotion across speakers: a logistic-regression probe per layer.

    python benchmarks/layer_probe.py            # the table in docs/training.md
    python benchmarks/layer_probe.py --json out.json

Reads the ``whisper-base-encoder`` features of every layer (``encoders.speech_layer: all``, over
the recipe's ``speech_window``, from the feature store; extracted on the first run) for the
EmotionTTS clips, pools each clip to the mean and standard deviation of its frames
(:func:`koemo.fusion.inputs.clip_stats`), and trains a logistic regression (scikit-learn, L2,
C = 0.1, features standardised on the training clips) on the text-neutral protocol: the 200
clips of the emotional-script speakers train, the 100 clips of the plain-script speakers (each
sentence read in all four emotions) test. Three normalisations:
none; per speaker at the frame level (``encoders.normalise: speaker``, koemo's); per speaker on
the pooled vectors. Weighted F1 on the test clips. A linear probe has no seed: one number each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMES = ["front end", "block 1", "block 2", "block 3", "block 4", "block 5", "final (block 6, normed)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--C", type=float, default=0.1)
    ap.add_argument("--recipe", default="emotiontts", help="whose speech window to read (emotiontts-30s: the whole pass)")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from koemo.config import Recipe, load_config, resolve_recipe
    from koemo.data.prepare import load_or_prepare
    from koemo.data.splits import make_folds
    from koemo.encoders.base import speech_settings
    from koemo.fusion.inputs import Moments, Normaliser, clip_stats, group_views
    from koemo.training.features import store_for

    recipe = load_config(Recipe, resolve_recipe(args.recipe))
    _, utts = load_or_prepare(recipe)
    settings = {**speech_settings(recipe.encoders), "layer": "all"}  # every layer, over the recipe's window
    frames = store_for(recipe).speech("whisper-base-encoder", utts, **settings)
    (fold,) = make_folds(utts, "text-neutral", valid="none")
    ids = [u.id for u in utts]
    label = np.array([u.label for u in utts])
    train = np.isin(ids, fold.train)
    test = np.isin(ids, fold.test)
    speakers = {u.id: u.speaker for u in utts}
    corpus = Moments.sum(Moments.of(a) for a in frames.values())
    views = {
        "none": {u: clip_stats(a) for u, a in frames.items()},
        "speaker (frames)": group_views([frames], speakers, "stats", Normaliser.fit("speaker", corpus, 3))[0],
    }
    pooled = np.stack([views["none"][u][0] for u in ids])  # [N, L, 2D]
    by_speaker = pooled.copy()
    for s in set(speakers.values()):
        rows = np.array([speakers[u] == s for u in ids])
        by_speaker[rows] = (pooled[rows] - pooled[rows].mean(0)) / (pooled[rows].std(0) + 1e-6)
    table = {"none": pooled, "speaker (frames)": np.stack([views["speaker (frames)"][u][0] for u in ids]),
             "speaker (pooled)": by_speaker}
    out = {}
    for norm, x in table.items():
        row = []
        for layer in list(range(x.shape[1])) + ["all"]:
            feats = x.reshape(len(ids), -1) if layer == "all" else x[:, layer]
            sc = StandardScaler().fit(feats[train])
            clf = LogisticRegression(C=args.C, max_iter=5000).fit(sc.transform(feats[train]), label[train])
            row.append(round(float(f1_score(label[test], clf.predict(sc.transform(feats[test])), average="weighted")), 3))
        out[norm] = row
    cols = NAMES + ["all layers side by side"]
    print("| normalisation | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for norm, row in out.items():
        print(f"| {norm} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"layers": cols, "weighted_f1": out}, indent=1))


if __name__ == "__main__":
    main()
