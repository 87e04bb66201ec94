"""``koemo evaluate``: metrics of a bundle (or a run's bundles, or a predictions file)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from koemo.cliutil import DataDirOpt, JsonOpt, print_json


def evaluate(
    target: str = typer.Argument(..., help="A model bundle, a directory of bundles (folds/seeds, pooled), "
                                           "or a predictions JSONL (id, label, pred[, probs, seed, fold])."),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Test text source: gold or asr:<backend>[@noise] "
                                       "(default: the text each bundle was validated on)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label order, e.g. neutral,happy,sad,angry "
                                         "(default: the bundle's list, else the labels that occur)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Where metrics.json, predictions.jsonl and "
                                      "confusion.png go (default: <target>/eval/<text>, or beside a JSONL)."),
    data_dir: Optional[str] = DataDirOpt,
    json_: bool = JsonOpt,
) -> None:
    """Weighted F1 / weighted accuracy (the paper's), accuracy, UA, macro F1, per-class scores and
    the confusion matrix; mean ± std over seeds (each seed's folds pooled)."""
    from koemo.data.labels import resolve_label_set
    from koemo.evaluation.evaluate import collect, evaluate_predictions, infer_labels
    from koemo.training.bundle import predictions_file

    path = Path(target)
    preds, bundle_labels, origin = collect(path, text, data_dir=data_dir)
    preferred = list(resolve_label_set(labels)) if labels else bundle_labels
    label_list = infer_labels(preds, preferred)
    if out is None:
        name = predictions_file(text or "default")[: -len(".jsonl")]
        out_dir = path.parent / f"{path.stem}.eval" if path.is_file() else path / "eval" / name
    else:
        out_dir = Path(out)
    agg = evaluate_predictions(preds, label_list, out_dir, title=f"{path.name} ({text or 'default text'})")
    if json_:
        print_json({"source": origin, "out": str(out_dir), **agg.to_dict()})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{origin}[/bold]: {agg.confusion.sum()} predictions, seeds {agg.seeds}")
    table = Table("metric", "mean", "std", title="pooled per seed, mean ± std over seeds")
    for key, value in agg.mean.items():
        table.add_row(key, f"{value:.4f}", f"{agg.std[key]:.4f}")
    console.print(table)
    table = Table("label", "precision", "recall", "F1", "support", title="per class (all seeds pooled)")
    from koemo.metrics import metrics_from_confusion

    pooled = metrics_from_confusion(agg.confusion, label_list)
    for i, label in enumerate(label_list):
        table.add_row(label, f"{pooled.precision[i]:.3f}", f"{pooled.recall[i]:.3f}", f"{pooled.f1[i]:.3f}",
                      str(int(pooled.support[i])))
    console.print(table)
    typer.echo(f"written: {out_dir}/metrics.json, confusion.png, predictions.jsonl")


def register(root: typer.Typer) -> None:
    root.command("evaluate")(evaluate)
