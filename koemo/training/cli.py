"""``koemo train``: train a fusion model on a recipe's split (every fold, or one)."""

from __future__ import annotations

from typing import Optional

import typer

from koemo.cliutil import DataDirOpt, JsonOpt, RecipeOpt, SetOpt, print_json, recipe_from


def train(
    recipe: str = RecipeOpt,
    fusion: Optional[str] = typer.Option(None, "--fusion", "-f",
                                         help="shallow | fusion-transformer | mult | audio-only | text-only (default: model.fusion)."),
    text_train: Optional[str] = typer.Option(None, "--text-train", "-t",
                                             help="gold | asr:BACKEND | cr:BACKEND (default: train.text)."),
    fold: Optional[list[int]] = typer.Option(None, "--fold", help="Fold index (repeatable; default: every fold)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the split AND the training (split.seed, train.seed)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (default: <cache>/runs/...); one bundle per fold inside."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override train.epochs."),
    finetune: bool = typer.Option(False, "--finetune", help="Fine-tune the encoders end to end (slow on CPU)."),
    final: bool = typer.Option(False, "--final", help="The shipped model: cross-validate the recipe (for the "
                               "temperature and the model card), then train on every clip into --out."),
    cv_seeds: int = typer.Option(1, "--cv-seeds", help="With --final: seeds of the cross-validation."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if OUT holds an interrupted run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    overrides: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
    json_: bool = JsonOpt,
) -> None:
    """Train on the recipe's features, pick the best epoch on validation (weighted F1), test.

    Several processes (GPUs): torchrun --nproc_per_node N $(which koemo) train ...
    """
    from koemo.training.trainer import dist_info

    cfg = configure(recipe_from(recipe, overrides), fusion=fusion, text_train=text_train, seed=seed,
                    epochs=epochs, finetune=finetune)
    if final and out is None:
        raise typer.BadParameter("--final needs --out (the bundle directory to write)")
    result = run(cfg, folds=fold, out=out, final=final, cv_seeds=cv_seeds, data_dir=data_dir,
                 progress=not quiet, resume=not no_resume)
    if final:
        meta = result
        if json_:
            print_json({k: meta[k] for k in ("calibration", "cross_validation", "trained_on")})
            return
        cal = meta["calibration"]
        for protocol, s in meta["cross_validation"].items():
            typer.echo(f"held-out {protocol} ({s['source']}): weighted F1 {s['weighted_f1']:.4f}")
        typer.echo(f"temperature {cal['temperature']:.3f}: ECE {cal['ece_before']:.3f} -> "
                   f"{cal['ece_cross_fitted']:.3f} (cross-fitted, {cal['n']} held-out predictions)")
        typer.echo(f"final model on {meta['trained_on']['clips']} clips: {out} (model card: {out}/MODEL_CARD.md)")
        return
    summary = result
    if dist_info()[0] != 0:
        return
    if json_:
        print_json(summary.to_dict())
        return
    typer.echo(f"{cfg.model.fusion}, trained on {cfg.train.text}, {cfg.split.protocol} seed {cfg.split.seed}: {summary.out}")
    for name, r in summary.folds:
        tests = ", ".join(f"{s} {m['weighted_f1']:.4f}" for s, m in r.test.items())
        valid = (f"valid weighted F1 {r.valid['weighted_f1']:.4f} ({r.valid_source})" if r.valid
                 else "no validation set")
        typer.echo(f"  {name}: best epoch {r.best_epoch}, {valid}; test weighted F1 {tests}")
    for source, m in summary.pooled_test.items():
        typer.echo(f"pooled test ({m['n']} clips, {source}): weighted F1 {m['weighted_f1']:.4f}, "
                   f"accuracy {m['accuracy']:.4f}")


def configure(cfg, *, fusion: str | None = None, text_train: str | None = None, seed: int | None = None,
              epochs: int | None = None, finetune: bool = False):
    """Apply ``koemo train``'s shortcut options to a recipe (also :func:`koemo.train`'s); a wrong
    fusion name fails here, before any work."""
    from koemo.fusion import FUSIONS

    if fusion:
        cfg.model.fusion = fusion
    if text_train:
        cfg.train.text = text_train
    if seed is not None:
        cfg.split.seed = seed
        cfg.train.seed = seed
    if epochs is not None:
        cfg.train.epochs = epochs
    if finetune:
        cfg.encoders.finetune = True
    FUSIONS.get(cfg.model.fusion)
    return cfg


def run(cfg, *, folds=None, out=None, final: bool = False, cv_seeds: int = 1, data_dir=None,
        progress: bool = True, resume: bool = True):
    """Train as ``koemo train`` does: the recipe's folds (a :class:`TrainSummary`), or with
    ``final`` the shipped model into ``out`` (its bundle meta)."""
    if final:
        from koemo.training.final import train_final

        if out is None:
            raise ValueError("final=True needs out (the bundle directory to write)")
        return train_final(cfg, out, data_dir=data_dir, seeds=cv_seeds, progress=progress)
    from koemo.training.run import train_recipe

    return train_recipe(cfg, folds=folds, out=out, data_dir=data_dir, progress=progress, resume=resume)


def register(root: typer.Typer) -> None:
    root.command("train")(train)
