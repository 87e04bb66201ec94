"""Running the grid: each (job, seed) trained fold by fold with the same loop ``koemo train``
uses, into ``<runs dir>/<job>/seed<S>/<fold>`` bundles that a re-run reuses; shards and ``--only``
split the work between processes or machines that share the cache.

Caching and resuming: transcripts (ASR cache), features (feature store) and fold bundles are all
reused; a fold whose complete bundle has the same fingerprint (config, fold and data) is read,
not retrained, so a re-run only computes what changed.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable

from koemo.config import Recipe
from koemo.errors import KoemoError
from koemo.experiments.grid import Job, Plan
from koemo.experiments.inputs import Inputs, encoder_meta, feature_data
from koemo.training.run import runs_root

log = logging.getLogger("koemo")


def job_recipe(plan: Plan, job: Job, seed: int) -> Recipe:
    r = plan.recipe
    return replace(
        r,
        split=replace(r.split, protocol=job.protocol, seed=seed),
        model=replace(r.model, fusion=job.model.fusion),
        encoders=replace(r.encoders, speech=job.model.speech or "none", text=job.model.text or "none"),
        train=replace(r.train, text=job.train_text, seed=seed, checkpoint_every=r.eval.checkpoint_every),
    )


def fold_dir(recipe: Recipe, job: Job, seed: int, fold: str) -> Path:
    return runs_root(recipe) / job.slug / f"seed{seed}" / fold


def folds_for(plan: Plan, utts, protocol: str, seed: int):
    from koemo.data.splits import folds_of

    return folds_of(plan.recipe.split, utts, seed=seed, protocol=protocol)


def all_folds(plan: Plan, inputs: Inputs) -> dict[tuple[str, int], list]:
    """The folds of every (protocol, seed) the grid uses, drawn once."""
    return {(p, s): folds_for(plan, inputs.utts, p, s) for p in {j.protocol for j in plan.jobs} for s in plan.seeds}


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``I/N`` (0-based I) -> (I, N)."""
    if not shard:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise KoemoError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(m[1]), int(m[2])


def shard_units(units: list, folds: list[int], i: int, n: int) -> list:
    """Shard ``i`` of ``n``'s share of ``units`` (``folds[k]``: unit k's number of folds): the
    largest units first, each to the shard with the fewest folds so far (ties: the lowest shard),
    so that every process ends at about the same time (dealing every n-th unit gave one shard of
    the recipe's grid 231 folds, the other 159; now 200 and 190: the main protocol's units have
    25 folds, the text-neutral ones 1). Deterministic, so the n processes agree without talking;
    the share keeps the units' order (one job's tables at a time)."""
    load, owner = [0] * n, {}
    for k in sorted(range(len(units)), key=lambda k: (-folds[k], k)):
        s = min(range(n), key=lambda s: (load[s], s))
        owner[k] = s
        load[s] += folds[k]
    return [u for k, u in enumerate(units) if owner[k] == i]


def run_jobs(plan: Plan, inputs: Inputs, progress: bool = True,
             on_fold: Callable[[Job, int, str], None] | None = None,
             shard: tuple[int, int] | None = None, only: str | None = None) -> dict[tuple[Job, str], list]:
    """Train (or reuse) every fold of every job and seed with the fold loop ``koemo train`` uses
    (:func:`koemo.training.run.run_folds`); return pooled test predictions keyed by (job, test
    source), each prediction carrying its seed.

    A fold whose finished bundle has the same fingerprint is read, not retrained. With ``shard``
    ``(i, n)`` only shard i's share of the (job, seed) units (:func:`shard_units`, balanced by
    folds) is trained and nothing is returned:
    n processes (or machines sharing the cache) split the grid, then a run without a shard reads
    their bundles and writes the report. ``only`` (a regular expression) trains just the jobs
    whose slug it matches (``koemo reproduce --only``: the most wanted rows first) and likewise
    returns nothing."""
    from tqdm.auto import tqdm

    from koemo.training.run import run_folds

    folds_cache = all_folds(plan, inputs)
    units = [(job, tests, seed) for job, tests in sorted(plan.jobs.items(), key=lambda kv: kv[0].slug)
             for seed in plan.seeds]
    if only is not None:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise KoemoError(f"--only {only!r}: not a regular expression ({e})") from None
        units = [u for u in units if pattern.search(u[0].slug)]
        if not units:
            raise KoemoError(f"--only {only!r} matches no job of the grid; its jobs: "
                             + ", ".join(sorted({j.slug for j in plan.jobs})))
    if shard is not None:
        units = shard_units(units, [len(folds_cache[(job.protocol, seed)]) for job, _, seed in units], *shard)
    from koemo import distributed

    if distributed.active():  # --ray: train the units as Ray tasks; the loop below then reads their bundles
        train_on_ray(plan, inputs, units, folds_cache, progress)
    total = sum(len(folds_cache[(job.protocol, seed)]) for job, _, seed in units)
    preds: dict[tuple[Job, str], list] = defaultdict(list)
    partial = shard is not None or only is not None
    bar = tqdm(total=total, desc="reproduce" if shard is None else f"shard {shard[0]}/{shard[1]}",
               unit="fold", disable=not progress)
    t0, trained = time.time(), 0
    data_job, data, spec = None, None, None  # one job's tables at a time (units come sorted by job)
    try:
        for job, tests, seed in units:
            recipe = job_recipe(plan, job, seed)
            if job != data_job:
                data_job, (data, spec) = job, feature_data(job, tests, inputs, recipe)

            def done(outcome, job=job, tests=tests, seed=seed) -> None:
                nonlocal trained
                trained += outcome.trained
                if not partial:
                    for source in tests:
                        preds[(job, source)] += read_fold_predictions(outcome.out, source, seed)
                if on_fold:
                    on_fold(job, seed, outcome.fold.name)
                bar.update(1)

            bar.set_postfix_str(f"{job.slug} seed{seed}"[-60:])
            run_folds(recipe, folds_cache[(job.protocol, seed)], data,
                      out_for=lambda fold, job=job, seed=seed: fold_dir(plan.recipe, job, seed, fold.name),
                      encoders=encoder_meta(job.model, inputs, spec), progress=False, load_reused=False,
                      on_fold=done, input_arrays=spec.arrays() if spec else None)
    finally:
        bar.close()
    log.info("%d folds (%d trained, the rest read from finished bundles) in %.0f s", total, trained,
             time.time() - t0)
    return preds


def train_on_ray(plan: Plan, inputs: Inputs, units: list, folds_cache: dict, progress: bool = True) -> int:
    """Train the (job, tests, seed) ``units`` as Ray tasks (:func:`koemo.distributed.map_tasks`),
    each writing its fold bundles into the runs dir as :func:`run_jobs` does (a shared filesystem
    on a cluster of several machines); the inputs go into Ray's object store once. Returns the
    number of folds trained (the rest were finished bundles)."""
    from tqdm.auto import tqdm

    from koemo import distributed

    t0, trained = time.time(), 0
    with tqdm(total=sum(len(folds_cache[(j.protocol, s)]) for j, _, s in units), desc="reproduce (ray)",
              unit="fold", disable=not progress) as bar:
        for (job, _, seed), (n_trained, n_folds) in distributed.map_tasks(
                _train_unit, units, shared=(plan, inputs, folds_cache)):
            trained += n_trained
            bar.set_postfix_str(f"{job.slug} seed{seed}"[-60:])
            bar.update(n_folds)
    log.info("ray: %d units, %d folds trained in %.0f s", len(units), trained, time.time() - t0)
    return trained


def _train_unit(shared: tuple, unit: tuple) -> tuple[int, int]:
    """One (job, tests, seed) unit's folds, on a Ray worker: (folds trained, folds)."""
    from koemo.training.run import run_folds

    plan, inputs, folds_cache = shared
    job, tests, seed = unit
    recipe = job_recipe(plan, job, seed)
    data, spec = feature_data(job, tests, inputs, recipe)
    folds = folds_cache[(job.protocol, seed)]
    trained = 0

    def done(outcome) -> None:
        nonlocal trained
        trained += outcome.trained

    run_folds(recipe, folds, data, out_for=lambda fold: fold_dir(plan.recipe, job, seed, fold.name),
              encoders=encoder_meta(job.model, inputs, spec), progress=False, load_reused=False,
              on_fold=done, input_arrays=spec.arrays() if spec else None)
    return trained, len(folds)


def training_seconds(plan: Plan, inputs: Inputs) -> float:
    """Seconds spent training the grid's folds, summed from their bundles' epoch times: what the
    report states even when shards or earlier runs did the training (the report pass only reads)."""
    from koemo.training.bundle import read_meta

    total = 0.0
    folds = all_folds(plan, inputs)
    for job in plan.jobs:
        for seed in plan.seeds:
            for fold in folds[(job.protocol, seed)]:
                history = read_meta(fold_dir(plan.recipe, job, seed, fold.name)).get("history", [])
                total += sum(float(h.get("seconds", 0.0)) for h in history)
    return total


def read_fold_predictions(bundle: Path, source: str, seed: int) -> list:
    """A fold bundle's stored test predictions for ``source``, stamped with the grid's seed."""
    from koemo.training.bundle import read_predictions

    got = read_predictions(bundle, source)
    if got is None:
        raise KoemoError(f"{bundle}: the trainer wrote no '{source}' test predictions")
    for p in got:
        p.seed = seed
    return got


