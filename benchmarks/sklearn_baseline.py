"""The simplest strong baseline beside the shipped head: scikit-learn's logistic regression on the
same inputs and folds.

    python benchmarks/sklearn_baseline.py                    # the table in docs/voice.md
    python benchmarks/sklearn_baseline.py --C 0.03,0.1,1 --text --json out.json

The shipped head is a linear layer trained by Adam for a fixed number of epochs under weight
decay, text dropout and consistency regularization. Is a converged L2 logistic regression
(lbfgs, to convergence) on the same inputs any better? Inputs as the recipe builds them
(``koemo.training.features.speech_input``): the speech statistics of every Whisper layer, each
speaker's clips standardised by the speaker's statistics, plus the mixed-group view as a second
copy of every training clip; each column standardised on the training rows; audio only, or with
``--text`` the mean text vector beside it (human transcript in training, the service's ASR text
at test, as the CR row is scored). Folds: the recipe's 5 x 5 speaker-sentence grid of each seed
and the text-neutral protocol. The shipped head's predictions are read from the recipe's CR fold
bundles (``koemo reproduce -r emotiontts`` trained them), so both columns score the same clips.
Weighted F1 on the service text, each seed's folds pooled; mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="emotiontts")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--C", default="0.03,0.1,1", help="inverse L2 strengths, comma-separated")
    ap.add_argument("--text", action="store_true", help="the mean text vector beside the speech")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from koemo.cliutil import recipe_from
    from koemo.data.prepare import load_or_prepare
    from koemo.data.splits import folds_of
    from koemo.training import bundle as bundles
    from koemo.training.features import load_features, speech_input
    from koemo.training.final import cv_dir

    recipe = recipe_from(args.recipe, [])
    source = recipe.eval.text
    _, utts = load_or_prepare(recipe, None)
    frames, text, _ = load_features(recipe, utts, ["gold", source], progress=False)
    clean, copies, _ = speech_input(recipe, frames, utts)
    ids = [u.id for u in utts]
    labels = np.array([u.label for u in utts])

    def matrix(table) -> np.ndarray:
        return np.stack([np.asarray(table[u], np.float32).reshape(-1) for u in ids])

    def text_matrix(src: str) -> np.ndarray:
        return np.stack([np.asarray(text[src][u], np.float32).reshape(-1, np.asarray(text[src][u]).shape[-1]).mean(0)
                         for u in ids])

    speech, views = matrix(clean), [matrix(c) for c in copies]
    gold, served = (text_matrix("gold"), text_matrix(source)) if args.text else (None, None)
    strengths = [float(c) for c in args.C.split(",")]
    out: dict = {}
    for protocol in (recipe.split.protocol, "text-neutral"):
        row = {"shipped head": [], **{f"C={c:g}": [] for c in strengths}}
        for seed in range(args.seeds):
            truth, shipped, pred = [], [], {c: [] for c in strengths}
            for fold in folds_of(recipe.split, utts, seed=seed, protocol=protocol):
                tr, te = np.isin(ids, fold.train), np.isin(ids, fold.test)
                x = np.vstack([speech[tr], *[v[tr] for v in views]])
                y = np.concatenate([labels[tr]] * (1 + len(views)))
                xt = speech[te]
                if args.text:
                    x = np.hstack([x, np.vstack([gold[tr]] * (1 + len(views)))])
                    xt = np.hstack([xt, served[te]])
                scale = StandardScaler().fit(x)
                for c in strengths:
                    model = LogisticRegression(C=c, max_iter=5000).fit(scale.transform(x), y)
                    pred[c] += list(model.predict(scale.transform(xt)))
                truth += list(labels[te])
                where = cv_dir(recipe, protocol) / f"seed{seed}" / fold.name
                got = {p.id: p.pred for p in bundles.read_predictions(where, source) or []}
                if not got:
                    sys.exit(f"{where}: no predictions; run: koemo reproduce -r {args.recipe} --seeds {args.seeds}")
                shipped += [got[i] for i in np.asarray(ids)[te]]
            row["shipped head"].append(f1_score(truth, shipped, average="weighted"))
            for c in strengths:
                row[f"C={c:g}"].append(f1_score(truth, pred[c], average="weighted"))
            print(f"{protocol}, seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in row.items()), flush=True)
        out[protocol] = row
    print(f"\n| model | {recipe.split.protocol} | text-neutral |\n|---|---:|---:|")
    for key in out[recipe.split.protocol]:
        print(f"| {key} | " + " | ".join(f"{np.mean(out[p][key]):.3f} ± {np.std(out[p][key], ddof=1):.3f}" for p in out) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
