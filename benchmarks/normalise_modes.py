"""What the shipped model scores when it cannot normalise by the test speaker's own voice.

    python benchmarks/normalise_modes.py                # the table in docs/voice.md
    python benchmarks/normalise_modes.py --recipe emotiontts --seeds 5 --json out.json

The recipe's models are trained with each speaker's statistics (``encoders.normalise: speaker``).
In service the speaker is unknown: ``koemo predict DIR`` normalises by every file of the call,
``POST /v1/predict?session=ID`` by the session's clips, and a lone clip gets the training
corpus's statistics. This re-scores the recipe's text-neutral fold bundles (``koemo reproduce``
trained them; one per seed) on their 100 test clips with the speech input grouped four ways:

- ``speaker``: each test speaker's clips together (the protocol's number);
- ``test set``: all test clips as one group (``koemo predict DIR`` on a folder of several
  speakers: statistics of the new recording conditions, not of the voice);
- ``clip + corpus``: each clip alone, so the corpus statistics (what a single request without a
  session gets);
- ``raw``: no normalisation at all (what a model trained without it would see; a lower bound).

Weighted F1 on the service text (``eval.text``), mean ± sample standard deviation over seeds;
beside it the ECE (15 bins) of the raw probabilities and their mean top probability (means over
seeds): how far the confidence is from the accuracy when the normalisation changes; and the ECE
after the first head's temperature for that case, read from the shipped model (``--model``,
default ``default``: ``calibration.temperature``, and for a lone clip
``calibration.corpus_normalised.temperature``). A bundle with a second head for lone clips
(``lone/``) serves them with that head and its own temperature instead: its lone-clip scores
are in its card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("speaker", "test set", "clip + corpus", "raw")


def main() -> None:
    from textneutral import arguments, fold_bundles, scored

    args = arguments(__doc__, {"--model": {"default": "default", "help": "the bundle whose temperatures are applied"}})
    import dataclasses

    from koemo.cliutil import recipe_from
    from koemo.data.prepare import load_or_prepare
    from koemo.training import bundle as bundles
    from koemo.training.features import load_features, speech_input

    recipe = recipe_from(args.recipe, args.set)
    raw = dataclasses.replace(recipe, encoders=dataclasses.replace(recipe.encoders, normalise="none"))
    source = recipe.eval.text
    _, utts = load_or_prepare(recipe, None)
    frames, _, _ = load_features(recipe, utts, [], progress=False)
    # each mode regroups the test clips (a group of one clip gets the corpus statistics) and builds
    # the speech input the way training does (koemo.training.features.speech_input)
    group_of = {"speaker": lambda u: u.speaker, "test set": lambda u: "<test set>",
                "clip + corpus": lambda u: u.id, "raw": lambda u: u.id}
    views: dict[tuple, dict] = {}
    from koemo.serving.loader import resolve_model

    t_speaker, t_lone = bundles.temperatures(bundles.read_meta(bundles.resolve_bundle(resolve_model(args.model)[0])))
    t_of = {"speaker": t_speaker, "test set": t_speaker, "clip + corpus": t_lone, "raw": 1.0}

    def speech_of(mode: str, test_ids: frozenset) -> dict:
        if (mode, test_ids) not in views:
            regrouped = [dataclasses.replace(u, speaker=group_of[mode](u)) if u.id in test_ids else u for u in utts]
            views[(mode, test_ids)] = speech_input(raw if mode == "raw" else recipe, frames, regrouped)[0]
        return views[(mode, test_ids)]

    scores: dict[str, list[float]] = {m: [] for m in MODES}
    calibration: dict[str, list[tuple]] = {m: [] for m in MODES}  # (ECE, mean confidence, ECE scaled)
    for seed, b in enumerate(fold_bundles(recipe, args.recipe, args.seeds)):
        test_ids = frozenset(p.id for p in bundles.read_predictions(b.path, source) or [])
        test = [u for u in utts if u.id in test_ids]
        _, text, _ = load_features(recipe, test, [source], progress=False)
        for mode in MODES:
            got = scored(b, speech_of(mode, test_ids), text, test, source, t_of[mode])
            scores[mode].append(got["weighted_f1"])
            calibration[mode].append((got["ece"], got["confidence"], got["ece_t"]))
        print(f"seed {seed}: " + ", ".join(f"{m} {scores[m][-1]:.3f}" for m in MODES), flush=True)
    print("\n| test-time normalisation | weighted F1 (text-neutral, %d seeds) | ECE (raw) | mean top probability "
          "| temperature in service | ECE (scaled) |\n|---|---:|---:|---:|---:|---:|" % args.seeds)
    for m in MODES:
        ece, conf, ece_t = np.mean(calibration[m], axis=0)
        print(f"| {m} | {np.mean(scores[m]):.3f} ± {np.std(scores[m], ddof=1):.3f} | {ece:.3f} | {conf:.3f} "
              f"| {t_of[m]:.3f} | {ece_t:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"weighted_f1": scores, "ece_confidence": calibration}, indent=1),
                                   encoding="utf-8")


if __name__ == "__main__":
    main()
