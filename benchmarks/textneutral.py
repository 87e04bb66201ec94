"""What the benchmarks that re-score the recipe's text-neutral fold bundles share
(``normalise_modes.py``, ``channel_shift.py``): their arguments, the bundles (one per seed, as
``koemo reproduce`` trained them) and one score."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def arguments(doc: str, extra: dict | None = None) -> argparse.Namespace:
    """The shared options, plus ``extra`` (``{flag: argparse keywords}``) of one benchmark."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, kwargs in (extra or {}).items():
        ap.add_argument(flag, **kwargs)
    ap.add_argument("--recipe", default="emotiontts")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], help="a recipe override, as koemo's --set")
    ap.add_argument("--json", help="also write the numbers here")
    return ap.parse_args()


def fold_bundles(recipe, recipe_name: str, seeds: int) -> list[Path]:
    """The text-neutral fold bundle of each seed; exits with the command that trains them."""
    from koemo.training import bundle as bundles
    from koemo.training.final import cv_dir

    found = []
    for seed in range(seeds):
        where = cv_dir(recipe, "text-neutral") / f"seed{seed}" / "text-neutral"
        if not (where / bundles.META).is_file():
            sys.exit(f"{where}: no bundle; run: koemo reproduce -r {recipe_name} --seeds {seeds}")
        found.append(where)
    return found


def weighted_f1(bundle, speech, text, test, source: str) -> float:
    """``bundle``'s weighted F1 on the clips ``test`` with these speech and text tables."""
    from koemo.metrics import compute_metrics
    from koemo.training.data import FeatureData
    from koemo.training.trainer import predict_proba

    data = FeatureData(speech, text, {u.id: u.label for u in test}, bundle.labels)
    probs = predict_proba(bundle.model, data, [u.id for u in test], source)
    pred = [bundle.labels[int(p.argmax())] for p in probs]
    return compute_metrics([u.label for u in test], pred, bundle.labels).weighted_f1
