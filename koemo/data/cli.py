"""``koemo data ...``: prepare a manifest, print statistics, make splits, download a dataset."""

from __future__ import annotations

from typing import Optional

import typer

from koemo.cliutil import DataDirOpt, JsonOpt, RecipeOpt, SetOpt, print_json, recipe_from

app = typer.Typer(help="Datasets: manifests, statistics and splits.", no_args_is_help=True)


@app.command()
def prepare(
    recipe: str = RecipeOpt, set_: Optional[list[str]] = SetOpt, data_dir: Optional[str] = DataDirOpt
) -> None:
    """Read the dataset in its published layout and write the utterance manifest."""
    from koemo.data.prepare import prepare as run

    path, utts, skips = run(recipe_from(recipe, set_), data_dir)
    typer.echo(f"manifest: {path} ({skips.summary(len(utts))})")


@app.command()
def stats(
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
    json_: bool = JsonOpt,
) -> None:
    """Counts per label and speaker, and total duration (prepares the manifest if needed)."""
    from koemo.data.prepare import load_or_prepare
    from koemo.data.prepare import stats as compute

    path, utts = load_or_prepare(recipe_from(recipe, set_), data_dir)
    s = compute(utts)
    if json_:
        print_json({"manifest": str(path), **s})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{path}[/bold]")
    console.print(
        f"{s['utterances']} utterances, {s['speakers']} speakers, {s['sentences']} sentences, "
        f"{s['duration_total_s'] / 60:.1f} min total (mean {s['duration_mean_s']:.2f} s, "
        f"{s['duration_min_s']:.2f}-{s['duration_max_s']:.2f} s)"
    )
    table = Table("label", "utterances")
    for label, n in s["labels"].items():
        table.add_row(label, str(n))
    console.print(table)
    table = Table("speaker", "utterances")
    for spk, n in s["per_speaker"].items():
        table.add_row(spk, str(n))
    console.print(table)
    for source, n in s["transcripts"].items():
        console.print(f"transcripts {source}: {n}")


@app.command()
def split(
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
    seed: Optional[int] = typer.Option(None, help="Split seed (default: split.seed of the recipe)."),
    json_: bool = JsonOpt,
) -> None:
    """Make the recipe's split for a seed and save it beside the manifest."""
    from koemo.data.prepare import load_or_prepare
    from koemo.data.prepare import split as run
    from koemo.data.splits import leakage

    cfg = recipe_from(recipe, set_)
    manifest, utts = load_or_prepare(cfg, data_dir)
    path, folds = run(cfg, utts, manifest, seed)
    rows = [{"fold": f.name, "train": len(f.train), "valid": len(f.valid), "test": len(f.test),
             **{k: v for k, v in leakage(utts, f).items() if k != "test"}} for f in folds]
    if json_:
        print_json({"split": str(path), "folds": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("fold", "train", "valid", "test", "test speaker seen", "test sentence seen",
                  title=f"{cfg.split.protocol} split, seed {seed if seed is not None else cfg.split.seed}")
    for r in rows:
        table.add_row(r["fold"], str(r["train"]), str(r["valid"]), str(r["test"]),
                      str(r["test_speaker_seen"]), str(r["test_sentence_seen"]))
    Console().print(table)
    typer.echo(f"split: {path}")


@app.command()
def download(
    dataset: str = typer.Argument(..., help="Dataset name (emotiontts)."),
    dest: Optional[str] = typer.Option(None, help="Target directory (default: under the data dir)."),
) -> None:
    """Clone a public dataset (needs internet)."""
    from koemo.data.prepare import download as run

    typer.echo(f"dataset at {run(dataset, dest)}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
