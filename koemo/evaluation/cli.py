"""``koemo evaluate``: metrics of a bundle (or a run's bundles, or a predictions file)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from koemo.cliutil import DataDirOpt, JsonOpt, RecipeOpt, SetOpt, print_json, recipe_from


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
    from koemo.evaluation.evaluate import collect, evaluate_predictions, infer_labels, source_filename

    path = Path(target)
    preds, bundle_labels, origin = collect(path, text, data_dir=data_dir)
    preferred = list(resolve_label_set(labels)) if labels else bundle_labels
    label_list = infer_labels(preds, preferred)
    if out is None:
        name = source_filename(text or "default")[: -len(".jsonl")]
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
    from koemo.evaluation.metrics import metrics_from_confusion

    pooled = metrics_from_confusion(agg.confusion, label_list)
    for i, label in enumerate(label_list):
        table.add_row(label, f"{pooled.precision[i]:.3f}", f"{pooled.recall[i]:.3f}", f"{pooled.f1[i]:.3f}",
                      str(int(pooled.support[i])))
    console.print(table)
    typer.echo(f"written: {out_dir}/metrics.json, confusion.png, predictions.jsonl")


def reproduce(
    recipe: str = RecipeOpt,
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds (each redraws the folds); default eval.seeds."),
    fast: bool = typer.Option(False, "--fast", help="Reduced grid for a demo: 2 seeds, the main rows, no SNR curve."),
    out: str = typer.Option("results", "--out", "-o", help="Where results.json, REPORT.md/.html and figures/ go."),
    gradcam: bool = typer.Option(True, "--gradcam/--no-gradcam", help="Compute the modality-contribution figures."),
    save_inputs: Optional[str] = typer.Option(None, "--save-inputs", help="Also write the prepared transcripts "
                                              "and features to this .npz (to train the grid elsewhere)."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Read transcripts and features from a pack "
                                         "written by --save-inputs (no ASR or encoder weights needed)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: train only this share of the grid (run N "
                                        "of these in parallel, then once without --shard for the report)."),
    only: Optional[str] = typer.Option(None, "--only", help="REGEX: train only the grid's jobs whose name "
                                       "matches (the most wanted rows first); writes no report."),
    prepare_only: bool = typer.Option(False, "--prepare-only", help="Stop after transcripts and features "
                                      "(and --save-inputs): the CPU half of a run finished on a GPU box."),
    set_: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Run the paper's experiments (Table 3, Table 4, ASR table, SNR curve, protocol comparison) and
    write the report. Cached and resumable: a re-run only computes what changed."""
    import shlex
    import sys

    from koemo.evaluation.reproduce import FAST_OVERRIDES
    from koemo.evaluation.reproduce import reproduce as run

    overrides = (FAST_OVERRIDES if fast else []) + list(set_ or [])
    if seeds is not None:
        overrides.append(f"eval.seeds={seeds}")
    cfg = recipe_from(recipe, overrides)
    command = "koemo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc = run(cfg, out, data_dir, command=command, gradcam=gradcam, inputs_path=inputs,
              save_inputs_path=save_inputs, shard=shard, prepare_only=prepare_only, only=only)
    if prepare_only:
        typer.echo(f"inputs prepared ({doc['meta']['wall_time_s'] / 60:.1f} min)"
                   + (f": {save_inputs}" if save_inputs else ""))
        return
    if shard or only:
        what = " and ".join(x for x in (f"shard {shard}" if shard else "", f"jobs matching {only!r}" if only else "") if x)
        typer.echo(f"{what} trained ({doc['meta']['wall_time_s'] / 60:.1f} min); "
                   "run without --shard/--only to write the report")
        return
    typer.echo(f"report: {Path(out) / 'REPORT.md'} ({doc['meta']['wall_time_s'] / 60:.1f} min)")


def register(root: typer.Typer) -> None:
    root.command("evaluate")(evaluate)
    root.command("reproduce")(reproduce)
