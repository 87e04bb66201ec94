"""Shared pieces of the command line: recipe loading, overrides, output formatting."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from koemo.config import Recipe, load_config, resolve_recipe

RecipeOpt = typer.Option("emotiontts", "--recipe", "-r", help="Recipe YAML path or name under recipes/.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config field, e.g. --set train.lr=1e-4 (repeatable).")
DataDirOpt = typer.Option(None, "--data-dir", help="Dataset root (default: $KOEMO_DATA_DIR or ../shared/data).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")
RayOpt = typer.Option(False, "--ray", help="Run the work on Ray: a local cluster started for this command "
                      "(needs the 'distributed' extra; docs/scaling.md).")
RayAddressOpt = typer.Option(None, "--ray-address", help="Run the work on the existing Ray cluster at HOST:PORT "
                             "(or 'auto'); the nodes must share KOEMO_CACHE (docs/scaling.md).")
RayGpusOpt = typer.Option(0.0, "--ray-gpus", help="GPUs each Ray training task asks for (e.g. 0.25: four "
                          "on one GPU; with --set train.device=cuda). Recognisers and encoders run on CPUs.")


def recipe_from(recipe: str | None, overrides: Optional[list[str]]) -> Recipe:
    return load_config(Recipe, resolve_recipe(recipe), overrides or [])


def ray_engine(ray: bool, address: Optional[str], gpus: float = 0.0):
    """The Ray engine of ``--ray``/``--ray-address`` (:func:`koemo.distributed.engine`), or a
    context that changes nothing when neither is given."""
    from contextlib import nullcontext

    if not ray and not address:
        return nullcontext()
    from koemo.distributed import engine

    return engine(address or None, gpus=gpus)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))
