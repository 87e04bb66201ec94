"""The ``koemo`` command. Each area adds its commands from its own ``cli.py`` (a ``register``
function), so the top level stays a list and heavy imports happen only inside commands."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from koemo import __version__
from koemo.errors import KoemoError

app = typer.Typer(
    help="koemo: Korean multimodal speech emotion recognition robust to ASR errors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Areas in data-flow order; a missing module is skipped so an area can be added in one step.
AREAS = [
    "koemo.data.cli",
    "koemo.models.cli",
    "koemo.asr.cli",
    "koemo.encoders.cli",
    "koemo.training.cli",
    "koemo.evaluation.cli",
    "koemo.experiments.cli",
    "koemo.serving.cli",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"koemo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


for _module in AREAS:
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as _e:
        if _e.name != _module and not _module.startswith(str(_e.name) + "."):
            raise


def main() -> None:
    try:
        app()
    except KoemoError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except SystemExit as e:
        # typer turns Ctrl-C into exit code 130 before it reaches us
        if e.code == 130:
            typer.echo("interrupted; finished results are kept and a re-run resumes", err=True)
        raise


if __name__ == "__main__":
    main()
