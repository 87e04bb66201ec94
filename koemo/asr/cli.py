"""``koemo asr-eval``. (``koemo transcribe`` is in :mod:`koemo.encoders.cli`: with a recipe's
``asr.shared_pass`` its recogniser is the speech encoder's pass, and that pass fills the feature
store too, so it needs the encoders layer.)"""

from __future__ import annotations

from typing import Optional

import typer

from koemo.cliutil import (DataDirOpt, JsonOpt, RecipeOpt, SetOpt, print_json,
                           recipe_from)


def asr_eval(
    recipe: str = RecipeOpt,
    sources: Optional[list[str]] = typer.Option(
        None, "--source", help="Transcript column to score, e.g. asr:whisper-base@babble-10db (repeatable; default: all asr:* columns)."
    ),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write the table: .csv (all counts) or .md (Markdown)."),
    overrides: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
    json_: bool = JsonOpt,
) -> None:
    """CER, WER and sWER of ASR transcripts against the human transcript (corpus level: total edits / reference length)."""
    from koemo.asr.evaluate import evaluate_sources, to_markdown, write_table
    from koemo.data.prepare import load_or_prepare

    cfg = recipe_from(recipe, overrides)
    _, utts = load_or_prepare(cfg, data_dir)
    results = evaluate_sources(utts, sources)
    if json_:
        print_json([{"source": s, "missing": m, **sc.as_dict()} for s, m, sc in results])
    else:
        typer.echo(to_markdown(results), nl=False)
    if out:
        typer.echo(f"wrote {write_table(results, out)}", err=True)


def register(root: typer.Typer) -> None:
    root.command("asr-eval")(asr_eval)
