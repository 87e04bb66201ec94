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


def recipe_from(recipe: str | None, overrides: Optional[list[str]]) -> Recipe:
    return load_config(Recipe, resolve_recipe(recipe), overrides or [])


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))
