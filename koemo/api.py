"""koemo for Python programs: :class:`Recognizer` (predict), :func:`train` and :func:`reproduce`
(the ``koemo train`` / ``koemo reproduce`` commands as functions).

Like the command line this face sees every layer; ``import koemo`` stays light because the
package exports these names lazily (nothing heavy loads before first use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from koemo.serving.recognizer import PRETRAINED, Contribution, Recognizer, Result, Utterance

__all__ = ["Recognizer", "Result", "Utterance", "Contribution", "PRETRAINED", "train", "reproduce"]


def train(recipe: str = "emotiontts", *, fusion: str | None = None, text_train: str | None = None,
          folds: Optional[Sequence[int]] = None, seed: int | None = None, epochs: int | None = None,
          out: str | Path | None = None, final: bool = False, cv_seeds: int = 1, finetune: bool = False,
          overrides: Sequence[str] = (), data_dir: str | Path | None = None, progress: bool = True,
          resume: bool = True):
    """``koemo train`` as a function: returns the run's :class:`~koemo.training.run.TrainSummary`
    (per-fold and pooled scores, ``.to_dict()``), or with ``final=True`` the shipped model's
    bundle meta (written to ``out``, loadable with :meth:`Recognizer.from_pretrained`).

    ``overrides``: recipe fields as on the command line, e.g. ``["train.lr=1e-4"]``.

    >>> koemo.train("emotiontts", fusion="nonesuch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    koemo.errors.KoemoError: unknown fusion model 'nonesuch'; known: audio-only, ..., linear, ...
    """
    from koemo.cliutil import recipe_from
    from koemo.training.cli import configure, run

    cfg = configure(recipe_from(recipe, list(overrides)), fusion=fusion, text_train=text_train, seed=seed,
                    epochs=epochs, finetune=finetune)
    return run(cfg, folds=list(folds) if folds is not None else None, out=str(out) if out else None,
               final=final, cv_seeds=cv_seeds, data_dir=data_dir, progress=progress, resume=resume)


def reproduce(recipe: str = "emotiontts", *, seeds: int | None = None, fast: bool = False,
              out: str | Path = "results", gradcam: bool = True, overrides: Sequence[str] = (),
              data_dir: str | Path | None = None, only: str | None = None,
              ray: bool | str = False) -> dict[str, Any]:
    """``koemo reproduce`` as a function: trains the recipe's grid (cached, resumable), writes
    ``out/REPORT.md`` and returns the results document (what ``out/results.json`` holds).
    ``ray``: True runs it on a local Ray cluster (``--ray``), an address on that cluster
    (``--ray-address``; docs/scaling.md)."""
    from koemo.experiments.cli import grid_recipe
    from koemo.experiments.reproduce import reproduce as run

    cfg = grid_recipe(recipe, seeds=seeds, fast=fast, overrides=overrides)
    command = f"koemo.reproduce({recipe!r}, seeds={seeds!r}, fast={fast!r})"
    from contextlib import nullcontext

    from koemo.distributed import engine

    with engine(ray if isinstance(ray, str) else None) if ray else nullcontext():
        return run(cfg, str(out), data_dir, command=command, gradcam=gradcam, inputs_path=None,
                   save_inputs_path=None, shard=None, prepare_only=False, only=only)
