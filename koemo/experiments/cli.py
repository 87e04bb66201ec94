"""``koemo reproduce``: the paper's grid (a recipe's ``eval`` section) trained, scored and reported."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from koemo.cliutil import DataDirOpt, RayAddressOpt, RayGpusOpt, RayOpt, RecipeOpt, SetOpt, ray_engine, recipe_from


def reproduce(
    recipe: str = RecipeOpt,
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds (each redraws the folds); default eval.seeds."),
    fast: bool = typer.Option(False, "--fast", help="The recipe's reduced demo grid: recipe NAME-demo "
                              "(emotiontts-demo: 2 seeds, 2x2 folds, the main rows)."),
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
    ray: bool = RayOpt,
    ray_address: Optional[str] = RayAddressOpt,
    ray_gpus: float = RayGpusOpt,
) -> None:
    """Run the paper's experiments (Table 3, Table 4, ASR table, SNR curve, protocol comparison) and
    write the report. Cached and resumable: a re-run only computes what changed."""
    import shlex
    import sys

    from koemo.experiments.reproduce import reproduce as run

    cfg = grid_recipe(recipe, seeds=seeds, fast=fast, overrides=set_)
    command = "koemo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with ray_engine(ray, ray_address, ray_gpus):  # --ray: transcripts, features and training on Ray
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


def grid_recipe(recipe: str, *, seeds: int | None = None, fast: bool = False, overrides=None):
    """The recipe ``koemo reproduce`` runs (also :func:`koemo.reproduce`'s): ``fast`` takes the
    reduced ``NAME-demo`` variant, ``seeds`` overrides ``eval.seeds``."""
    overrides = list(overrides or [])
    if seeds is not None:
        overrides.append(f"eval.seeds={seeds}")
    return recipe_from(f"{recipe}-demo" if fast else recipe, overrides)


def register(root: typer.Typer) -> None:
    root.command("reproduce")(reproduce)
