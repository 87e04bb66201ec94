"""A session's own statistics against the corpus's: would blending the two predictions help?

    python benchmarks/session_mix.py --json mix.json    # ~7 min: every session's probabilities
    python benchmarks/session_blend.py mix.json         # seconds

A session normalised by its own statistics scores best when its clips mix emotions and collapses
towards chance when they share one (``session_mix.py``); the corpus's statistics are safe against
that but lose 15-45 points under a new channel. This re-scores the sessions of
``session_mix.py``'s JSON with each clip's two probability vectors combined:

- ``mean`` / ``geometric``: the average of the two (arithmetic; normalised geometric);
- ``prior^a``: the own-statistics probabilities times the session's mean corpus-statistics
  probability to the power a (normalised): the own view assumes a balanced session, the corpus
  view estimates how the session's labels are spread;
- ``vote prior``: the same with the corpus view's label counts (+1 each) as the spread.

Weighted F1 over a kind's sessions' clips, mean over the seeds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _normalised(p: np.ndarray) -> np.ndarray:
    return p / p.sum(1, keepdims=True)


def blends(own: np.ndarray, corpus: np.ndarray) -> dict[str, np.ndarray]:
    """Each way to combine a session's ``[clips, labels]`` probabilities."""
    spread = corpus.mean(0)
    votes = np.bincount(corpus.argmax(1), minlength=own.shape[1]) + 1.0
    out = {"own": own, "corpus": corpus, "mean": (own + corpus) / 2, "geometric": _normalised(np.sqrt(own * corpus))}
    for a in (0.5, 1.0, 2.0):
        out[f"prior^{a:g}"] = _normalised(own * spread ** a)
    out["vote prior"] = _normalised(own * votes / votes.sum())
    return out


def score(records: list[dict]) -> dict:
    """{channel: {kind: {way: mean weighted F1 over seeds}}}."""
    from sklearn.metrics import f1_score

    pooled: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: ([], []))))
    for r in records:
        for way, p in blends(np.asarray(r["own"]), np.asarray(r["corpus"])).items():
            truth, pred = pooled[r["channel"]][r["kind"]][(way, r["seed"])]
            truth += r["truth"]
            pred += p.argmax(1).tolist()
    out: dict = {}
    for channel, kinds in pooled.items():
        for kind, runs in kinds.items():
            per_way: dict = defaultdict(list)
            for (way, _), (truth, pred) in runs.items():
                per_way[way].append(f1_score(truth, pred, average="weighted"))
            out.setdefault(channel, {})[kind] = {w: float(np.mean(v)) for w, v in per_way.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mix_json", help="session_mix.py --json's output")
    args = ap.parse_args()
    table = score(json.loads(Path(args.mix_json).read_text(encoding="utf-8"))["sessions"])
    ways = list(next(iter(next(iter(table.values())).values())))
    print("| channel | sessions | " + " | ".join(ways) + " |\n|---|---|" + "---:|" * len(ways))
    for channel, kinds in table.items():
        for kind, row in kinds.items():
            print(f"| {channel} | {kind} | " + " | ".join(f"{row[w]:.3f}" for w in ways) + " |")


if __name__ == "__main__":
    main()
