"""Requests without a session, normalised by the statistics of every request so far: measured.

    python benchmarks/deployment_stats.py [--orders 5] [--json out.json]

A request that comes alone is standardised by the studio corpus's statistics and served by the
second head (``train.lone_head``); a new recording channel moves it, and it loses 5-20 points
(``channel_shift.py``). A deployment's requests share its channel, so the statistics of all the
requests it has seen estimate the channel and its callers as a whole: what ``koemo predict DIR``
does with a folder of several speakers (``normalise_modes.py``), but built up request by request.
The service does this when every request joins one session (``koemo serve --deployment-session``,
or the same ``session=ID`` on every request).

This replays the recipe's 100 unheard text-neutral test clips as a stream of requests in random
orders, under ``channel_shift.py``'s channels, and scores each request as the service would:
``alone`` (the corpus statistics and the second head, every request); ``deployment`` (the
statistics of the requests so far, itself included, and the first head, once at least
``encoders.normalise_min_clips`` have come; the second head before). Three streams: ``balanced`` (the
100 clips, a quarter of each emotion), ``mostly neutral`` (the 25 neutral clips and 5 drawn from
each other emotion: 40 requests, 62% neutral, as a service's traffic may be) and ``by emotion`` (the
100 clips one emotion after another, as a test that walks a corpus laid out by label would send
them: the worst case of the running statistics). Weighted F1 over all
requests of a stream, and over those after the first 20 (``settled``); mean ± sd over the seeds'
fold bundles (5) x orders. Needs the recipe's text-neutral fold bundles of both heads (``koemo
train --final -r emotiontts --cv-seeds 5``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTLED_AFTER = 20


def running_groups(stats_moments: list, min_clips: int) -> list:
    """For each request of a stream, the summed moments of the requests up to it (itself
    included), or None while fewer than ``min_clips`` have come."""
    out, total = [], None
    for m in stats_moments:
        total = m if total is None else total + m
        out.append(total if total.clips >= min_clips else None)
    return out


def main() -> None:
    from textneutral import arguments, fold_bundles, test_set

    args = arguments(__doc__, {"--orders": {"type": int, "default": 5, "help": "random orders of each stream"}})
    from sklearn.metrics import f1_score

    from channel_shift import CHANNELS, Channel
    from koemo.fusion.inputs import Moments, Normaliser, clip_stats, stats_view
    from koemo.training.data import FeatureData
    from koemo.training.final import lone_recipe
    from koemo.training.trainer import predict_proba

    ts = test_set(args)
    recipe, frames, test, source = ts.recipe, ts.frames, ts.test, ts.source
    second = lone_recipe(recipe)
    seconds = fold_bundles(second, f"{args.recipe} (train --final)", args.seeds)
    enc = recipe.encoders
    norm = Normaliser.fit(enc.normalise, Moments.sum(Moments.of(a) for a in frames.values()), enc.normalise_min_clips)
    layers_first, layers_second = enc.speech_layers, second.encoders.speech_layers

    def probs(bundle, ids: list[str], views: dict) -> np.ndarray:
        data = FeatureData({k: v.astype(np.float16) for k, v in views.items()}, ts.text,
                           {u.id: u.label for u in test}, bundle.labels)
        return np.asarray(predict_proba(bundle.model, data, ids, source))

    by_id = {u.id: u for u in test}
    by_label: dict[str, list[str]] = {}  # each label's clips, in test order
    for u in test:
        by_label.setdefault(u.label, []).append(u.id)
    results: dict = {}
    for channel in CHANNELS:
        shifted = dict(frames)
        if channel != "clean":
            shifted.update(ts.store.speech(enc.speech, test, **ts.settings, transform=Channel(channel, tuple(ts.utts))))
        raw = {u.id: clip_stats(shifted[u.id]) for u in test}
        moments = {u.id: Moments.of(shifted[u.id]) for u in test}
        alone_second = {i: stats_view(raw[i], *norm.stats_for(None), layers_second) for i in raw}  # corpus statistics
        scores: dict = {}
        for seed, (first_b, second_b) in enumerate(zip(ts.models, seconds)):
            labels = list(first_b.labels)
            p_alone = dict(zip(raw, probs(second_b, list(raw), alone_second)))
            rng = np.random.default_rng(seed)
            for order in range(args.orders):
                streams = {"balanced": list(rng.permutation([u.id for u in test])),
                           "mostly neutral": list(rng.permutation(by_label["neutral"] + [
                               i for lab in labels if lab != "neutral" for i in rng.choice(by_label[lab], 5, replace=False)])),
                           "by emotion": [i for lab in rng.permutation(labels) for i in rng.permutation(by_label[lab])]}
                for stream, ids in streams.items():
                    groups = running_groups([moments[i] for i in ids], norm.min_clips)
                    # a clip comes once a stream, so its id keys the view its request gets
                    views = {i: stats_view(raw[i], *g.mean_sd(), layers_first) for i, g in zip(ids, groups) if g is not None}
                    p_deploy = {**p_alone, **dict(zip(views, probs(first_b, list(views), views)))}
                    truth = [by_id[i].label for i in ids]
                    pred = {"alone": [labels[int(p_alone[i].argmax())] for i in ids],
                            "deployment": [labels[int(p_deploy[i].argmax())] for i in ids]}
                    for way, p in pred.items():
                        row = scores.setdefault(stream, {}).setdefault(way, {"all": [], "settled": []})
                        row["all"].append(f1_score(truth, p, average="weighted"))
                        row["settled"].append(f1_score(truth[SETTLED_AFTER:], p[SETTLED_AFTER:], average="weighted"))
        results[channel] = scores
        print(channel + ": " + "; ".join(f"{s} " + " / ".join(f"{w} {np.mean(v['all']):.3f}" for w, v in ways.items())
                                        for s, ways in scores.items()), flush=True)
    print("\n| channel | stream | alone (second head) | deployment statistics | alone, after the first 20 | deployment, after the first 20 |"
          "\n|---|---|---:|---:|---:|---:|")
    for channel, scores in results.items():
        for stream, ways in scores.items():
            cells = [f"{np.mean(ways[w][part]):.3f} ± {np.std(ways[w][part], ddof=1):.3f}"
                     for part in ("all", "settled") for w in ("alone", "deployment")]
            print(f"| {channel} | {stream} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
