"""What the benchmarks that re-score the recipe's text-neutral fold bundles share
(``normalise_modes.py``, ``channel_shift.py``): their arguments, the bundles (one per seed, as
``koemo reproduce`` trained them) and one score."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
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


@dataclass
class TestSet:
    """What the benchmarks that re-encode the test clips start from."""

    recipe: object
    source: str  # the service text (eval.text)
    utts: list
    frames: dict  # every clip's clean speech features
    store: object
    settings: dict  # the speech encoder's (speech_settings)
    models: list  # one text-neutral fold bundle per seed
    test: list  # its test clips
    test_ids: frozenset
    text: dict  # their text features


def test_set(args: argparse.Namespace) -> TestSet:
    """The recipe's features, its text-neutral fold bundles and their test clips."""
    from koemo.cliutil import recipe_from
    from koemo.data.prepare import load_or_prepare
    from koemo.encoders.base import speech_settings
    from koemo.training import bundle as bundles
    from koemo.training.features import load_features, store_for

    recipe = recipe_from(args.recipe, args.set)
    source = recipe.eval.text
    _, utts = load_or_prepare(recipe, None)
    frames, _, _ = load_features(recipe, utts, [], progress=False)
    models = fold_bundles(recipe, args.recipe, args.seeds)
    test_ids = frozenset(p.id for p in bundles.read_predictions(models[0].path, source) or [])
    test = [u for u in utts if u.id in test_ids]
    _, text, _ = load_features(recipe, test, [source], progress=False)
    return TestSet(recipe, source, utts, frames, store_for(recipe), speech_settings(recipe.encoders),
                   models, test, test_ids, text)


def shifted_input(recipe, clean: dict, shifted: dict, utts: list) -> dict:
    """The head's speech input of ``shifted`` frames (test clips re-encoded under a transform)
    grouped by ``utts``' speakers, where a group too small for its own statistics (a lone clip)
    gets the corpus statistics of the *clean* frames: what the bundle stores and the service
    applies (the shifted table's own would count the shifted test clips in, softening the shift
    for a lone clip)."""
    from koemo.training.features import speech_input

    return speech_input(recipe, shifted, utts, corpus=clean)[0]


def fold_bundles(recipe, recipe_name: str, seeds: int) -> list:
    """The text-neutral fold bundle of each seed, loaded; exits with the command that trains them,
    also where a bundle read other speech features than the recipe's (another layer or window:
    the benchmarks feed it the recipe's)."""
    from koemo.encoders.base import speech_settings
    from koemo.training import bundle as bundles
    from koemo.training.final import cv_dir

    found, want = [], speech_settings(recipe.encoders)
    for seed in range(seeds):
        where = cv_dir(recipe, "text-neutral") / f"seed{seed}" / "text-neutral"
        if not (where / bundles.META).is_file():
            sys.exit(f"{where}: no bundle; run: koemo reproduce -r {recipe_name} --seeds {seeds}")
        bundle = bundles.load_bundle(where)
        if (got := speech_settings(bundle.config.get("encoders") or {})) != want:
            sys.exit(f"{where}: trained on speech features {got}, the recipe reads {want}; "
                     f"run: koemo reproduce -r {recipe_name} --seeds {seeds}")
        found.append(bundle)
    return found


def weighted_f1(bundle, speech, text, test, source: str) -> float:
    """``bundle``'s weighted F1 on the clips ``test`` with these speech and text tables."""
    return scored(bundle, speech, text, test, source)["weighted_f1"]


def scored(bundle, speech, text, test, source: str, temperature: float = 1.0) -> dict[str, float]:
    """``bundle``'s weighted F1, ECE (15 bins, raw probabilities), mean top probability and ECE
    after scaling by ``temperature`` on the clips ``test`` with these speech and text tables."""
    import numpy as np

    from koemo.calibration import apply_temperature, ece
    from koemo.metrics import compute_metrics
    from koemo.training.data import FeatureData
    from koemo.training.trainer import predict_proba

    data = FeatureData(speech, text, {u.id: u.label for u in test}, bundle.labels)
    probs = np.asarray(predict_proba(bundle.model, data, [u.id for u in test], source))
    pred = [bundle.labels[int(p.argmax())] for p in probs]
    y = np.array([list(bundle.labels).index(u.label) for u in test])
    return {"weighted_f1": compute_metrics([u.label for u in test], pred, bundle.labels).weighted_f1,
            "ece": float(ece(probs, y)), "confidence": float(probs.max(axis=1).mean()),
            "ece_t": float(ece(apply_temperature(probs, temperature), y))}
