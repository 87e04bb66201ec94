"""``koemo evaluate``: metrics, confusion matrix and (optionally) modality contribution for a
predictions file, a model bundle, or a directory of bundles (the folds/seeds of one run, pooled).

Where predictions come from, in order:

1. a predictions JSONL given directly (``id, label, pred[, probs, seed, fold]``);
2. a bundle's stored test predictions for the text source, ``BUNDLE/predictions/<source>.jsonl``
   (the trainer writes them for every test source it was asked for);
3. otherwise the bundle's fusion model is run on the bundle's test split (re-derived from the
   split the bundle records) with that text source's features from the feature store
   (:func:`predict_bundle`).

Outputs (``--out``, default ``<target>/eval/<source>``): ``metrics.json`` (per-seed and aggregated
metrics), ``predictions.jsonl`` (pooled), ``confusion.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from koemo.errors import KoemoError
from koemo.metrics import Aggregate, Prediction, aggregate, read_predictions, write_predictions
from koemo.paths import atomic_write_text
from koemo.training import bundle as bundles

def infer_labels(preds: Sequence[Prediction], preferred: Sequence[str] | None = None) -> list[str]:
    """``preferred`` (e.g. the recipe's label set or the bundle's list) when it covers every label
    and prediction, else the sorted union of what occurs."""
    seen = {p.label for p in preds} | {p.pred for p in preds}
    if preferred and seen <= set(preferred):
        return list(preferred)
    if preferred:
        extra = sorted(seen - set(preferred))
        raise KoemoError(f"labels {', '.join(map(repr, extra))} are not in the label list ({', '.join(preferred)})")
    return sorted(seen)


def predict_bundle(bundle: Path, source: str, data_dir: str | None = None, progress: bool = True
                   ) -> list[Prediction]:
    """Run a bundle's model on its own test split with ``source`` text, features read from (or
    extracted into) the feature store with the encoders the bundle's config names."""
    from koemo.config import Recipe, load_config
    from koemo.data.prepare import load_or_prepare
    from koemo.data.splits import make_folds
    from koemo.sources import TextSource
    from koemo.training.data import FeatureData
    from koemo.training.features import load_features
    from koemo.training.trainer import predict_proba

    b = bundles.load_bundle(bundle)
    cfg = load_config(Recipe, bundle / bundles.CONFIG)
    _, utts = load_or_prepare(cfg, data_dir)
    split = b.meta.get("split") or {}
    folds = make_folds(utts, split.get("protocol", cfg.split.protocol), split.get("folds", cfg.split.folds),
                       split.get("seed", cfg.split.seed), tuple(cfg.split.ratios), valid=cfg.split.valid)
    fold = next((f for f in folds if f.name == split.get("fold")), None)
    if fold is None:
        raise KoemoError(f"{bundle}: its fold {split.get('fold')!r} is not in the split of the current data")
    test = set(fold.test)
    sel = [u for u in utts if u.id in test]
    lacking = [u.id for u in sel if source != "gold" and source not in u.transcripts]
    if lacking:
        raise KoemoError(f"{lacking[0]}: no '{source}' transcript ({len(lacking)} test clips); "
                         f"run: {TextSource.parse(source).transcribe_command()}")
    spec = ((b.meta.get("encoders") or {}).get("speech") or {}).get("input") or {}
    if (spec.get("normalise") or {}).get("mode", "none") != "none" or spec.get("view", "frames") != "frames" \
            or int(spec.get("pool", 1)) > 1:
        # the speech input as training built it: each speaker's clips normalised by all of them
        from koemo.training.features import speech_input

        frames, _, _ = load_features(cfg, utts, [], progress=progress)
        _, text, _ = load_features(cfg, sel, [source], progress=progress)
        audio, _, _ = speech_input(cfg, frames, utts)
    else:
        audio, text, _ = load_features(cfg, sel, [source], progress=progress)
    data = FeatureData(audio, text, {u.id: u.label for u in sel}, b.labels)
    data.check(fold.test, [source], "test")
    probs = predict_proba(b.model, data, fold.test, source)
    labels = b.labels
    return [Prediction(u, data.labels[u], labels[int(probs[i].argmax())], probs[i].tolist(),
                       int(split.get("seed", 0)), fold.name, {"source": source})
            for i, u in enumerate(fold.test)]


def collect(target: str | Path, source: str | None, data_dir: str | None = None
            ) -> tuple[list[Prediction], list[str] | None, str]:
    """Predictions (pooled over every bundle under ``target``), the label list if known, and a
    description of where they came from."""
    target = Path(target)
    if target.is_file():
        return read_predictions(target), None, str(target)
    if not target.is_dir():
        raise KoemoError(f"{target}: no such predictions file or bundle directory")
    found = bundles.find_bundles(target)
    if not found:
        raise KoemoError(f"{target}: not a bundle (no {bundles.META}) and no bundles inside")
    preds: list[Prediction] = []
    labels = None
    for b in found:
        meta = bundles.read_meta(b)
        if not meta.get("complete", True):
            raise KoemoError(f"{b}: training has not finished (resume it with koemo train)")
        labels = labels or meta.get("labels")
        src = source or meta.get("valid_source") or "gold"
        got = bundles.read_predictions(b, src)
        if got is None:
            if not ((b / bundles.CONFIG).is_file() and (b / bundles.WEIGHTS).is_file()):
                have = bundles.stored_sources(b)
                raise KoemoError(f"{b}: no stored test predictions for '{src}' (has: {', '.join(have) or 'none'}) "
                                 f"and no {bundles.CONFIG}/{bundles.WEIGHTS} to compute them")
            got = predict_bundle(b, src, data_dir)
        preds += got
    return preds, labels, f"{len(found)} bundle(s) under {target}"


def evaluate_predictions(
    preds: Sequence[Prediction], labels: Sequence[str], out_dir: str | Path | None = None, title: str = ""
) -> Aggregate:
    """Aggregate (per seed pooled, then mean ± std) and, with ``out_dir``, write metrics.json,
    predictions.jsonl and confusion.png there."""
    agg = aggregate(preds, labels)
    if out_dir is not None:
        from koemo.evaluation.plots import plot_confusions

        out_dir = Path(out_dir)
        doc = {"title": title, **agg.to_dict(),
               "per_seed_detail": {str(s): m.to_dict() for s, m in agg.per_seed.items()}}
        atomic_write_text(out_dir / "metrics.json", json.dumps(doc, ensure_ascii=False, indent=1))
        write_predictions(out_dir / "predictions.jsonl", preds)
        plot_confusions([(title or "confusion", agg.confusion)], labels, out_dir / "confusion.png",
                        suptitle=f"{len(agg.seeds)} seed(s), {agg.confusion.sum()} predictions")
    return agg
