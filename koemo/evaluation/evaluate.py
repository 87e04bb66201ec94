"""``koemo evaluate``: metrics, confusion matrix and (optionally) modality contribution for a
predictions file, a model bundle, or a directory of bundles (the folds/seeds of one run, pooled).

Where predictions come from, in order:

1. a predictions JSONL given directly (``id, label, pred[, probs, seed, fold]``);
2. a bundle's stored test predictions for the text source, ``BUNDLE/predictions/<source>.jsonl``
   (the trainer writes them for every test source it was asked for);
3. otherwise the bundle's fusion model is run on the bundle's test split with features of that
   text source from the feature store (:func:`predict_bundle`).

Outputs (``--out``, default ``<target>/eval/<source>``): ``metrics.json`` (per-seed and aggregated
metrics), ``predictions.jsonl`` (pooled), ``confusion.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from koemo.errors import KoemoError
from koemo.evaluation.metrics import Aggregate, Prediction, aggregate, read_predictions, write_predictions
from koemo.paths import atomic_write_text

BUNDLE_META = "bundle.json"


def source_filename(source: str) -> str:
    """The file name a text source's predictions have inside a bundle (``asr:b@x`` -> ``asr_b@x``)."""
    return source.replace(":", "_").replace("/", "_") + ".jsonl"


def find_bundles(target: Path) -> list[Path]:
    """``target`` itself if it is a bundle, else its bundle subdirectories (recursively, sorted)."""
    if (target / BUNDLE_META).is_file():
        return [target]
    found = sorted(p.parent for p in target.rglob(BUNDLE_META) if not any(
        part.startswith(".") for part in p.relative_to(target).parts))
    return found


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


def bundle_predictions(bundle: Path, source: str) -> list[Prediction] | None:
    """A bundle's stored test predictions for ``source`` (seed taken from the bundle's split)."""
    path = bundle / "predictions" / source_filename(source)
    if not path.is_file():
        return None
    preds = read_predictions(path)
    meta = json.loads((bundle / BUNDLE_META).read_text(encoding="utf-8"))
    seed = (meta.get("split") or {}).get("seed")
    if seed is not None:
        for p in preds:
            p.seed = int(seed)
    return preds


def predict_bundle(bundle: Path, source: str, recipe=None, data_dir: str | None = None) -> list[Prediction]:
    """Run a bundle's model on its own test split with ``source`` text features.

    Wired to the training area's feature loading once it exists; until then a bundle is evaluated
    from the test predictions it stores.
    """
    raise KoemoError(
        f"{bundle}: no stored test predictions for '{source}' "
        f"(has: {', '.join(sorted(p.stem for p in (bundle / 'predictions').glob('*.jsonl'))) or 'none'}); "
        f"train with that test source"
    )


def collect(target: str | Path, source: str | None, recipe=None, data_dir: str | None = None
            ) -> tuple[list[Prediction], list[str] | None, str]:
    """Predictions (pooled over every bundle under ``target``), the label list if known, and a
    description of where they came from."""
    target = Path(target)
    if target.is_file():
        return read_predictions(target), None, str(target)
    if not target.is_dir():
        raise KoemoError(f"{target}: no such predictions file or bundle directory")
    bundles = find_bundles(target)
    if not bundles:
        raise KoemoError(f"{target}: not a bundle (no {BUNDLE_META}) and no bundles inside")
    preds: list[Prediction] = []
    labels = None
    for b in bundles:
        meta = json.loads((b / BUNDLE_META).read_text(encoding="utf-8"))
        if not meta.get("complete", True):
            raise KoemoError(f"{b}: training has not finished (resume it with koemo train)")
        labels = labels or meta.get("labels")
        src = source or meta.get("valid_source") or "gold"
        got = bundle_predictions(b, src)
        if got is None:
            got = predict_bundle(b, src, recipe, data_dir)
        preds += got
    return preds, labels, f"{len(bundles)} bundle(s) under {target}"


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
