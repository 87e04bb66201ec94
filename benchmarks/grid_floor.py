"""The arithmetic floor of a `koemo reproduce` grid's training on this machine: how long the
grid's matrix products would take if nothing else cost anything.

For every job of the recipe's grid (seed 0's folds), the trainer's own step (`_FoldRun.micro_loss`
through `accumulate_step`, both CR paths where the job trains with CR) is run once on 32 training
clips under `torch.utils.flop_counter.FlopCounterMode`, and once timed; a forward pass of 32 clips
is counted for validation and test. Each fold costs `epochs x ceil(train / batch)` steps plus its
validation set every epoch and its test set once per text source; the sum over jobs, folds and
seeds is divided by the products' best rate here (one thread, float32 and bfloat16 matrix
products of the heads' shapes), for one process and for N processes side by side.

    python benchmarks/grid_floor.py -r emotiontts-paper --set model.hidden=128 \
        --set model.audio_pool=16 --set 'eval.snr_values=[]' [--processes 2] [--json]

Features must be in the store (a `koemo reproduce` run of the recipe fills it).
"""

from __future__ import annotations

import argparse
import json
import math
import time


def product_rate(dtype, m: int = 1280, k: int = 768, n: int = 384, runs: int = 40) -> float:
    """GFLOP/s of one thread's ``[m, k] @ [k, n]`` products in ``dtype`` (the best of 3 rounds)."""
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(5):
        a @ b
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(runs):
            a @ b
        best = min(best, (time.perf_counter() - t0) / runs)
    return 2 * m * k * n / best / 1e9


def step_cost(run, ids) -> tuple[float, float, float]:
    """(FLOP of one training step on ``ids``, seconds it takes, FLOP of a forward pass a clip)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from koemo.training.steps import accumulate_step, predict_proba

    def step():
        run.optim.zero_grad(set_to_none=True)
        accumulate_step(run.net, run.micro_loss, ids, 0, 1, 1)
        run.optim.step()

    torch.manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        step()
    flop = counter.get_total_flops()
    step()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    seconds = (time.perf_counter() - t0) / 3
    with FlopCounterMode(display=False) as counter:
        predict_proba(run.model, run.data, ids, run.plan.valid_source, len(ids))
    return flop, seconds, counter.get_total_flops() / len(ids)


def grid_cost(recipe, progress: bool = True) -> list[dict]:
    """One row per job: its model, training text, protocol, FLOP and measured seconds per step,
    and the TFLOP of all its folds and seeds."""
    import torch
    from tqdm.auto import tqdm

    from koemo.experiments.grid import make_plan
    from koemo.experiments.inputs import feature_data, prepare_inputs
    from koemo.experiments.runner import folds_for, job_recipe
    from koemo.training.trainer import _FoldRun, plan_fold

    torch.set_num_threads(1)
    plan = make_plan(recipe)
    inputs, _ = prepare_inputs(plan, progress=progress)
    rows = []
    for job, tests in tqdm(list(plan.jobs.items()), desc="jobs", unit="job", disable=not progress):
        r = job_recipe(plan, job, plan.seeds[0])
        folds = folds_for(plan, inputs.utts, job.protocol, plan.seeds[0])
        data, _ = feature_data(job, tests, inputs, r)
        fold = folds[0]
        run = _FoldRun(r, fold, data, plan_fold(r, fold, data, stack=False), None, None)
        run.fit_inputs()
        flop, seconds, forward = step_cost(run, fold.train[: r.train.batch_size])
        tc = r.train
        per_seed = 0.0
        steps = 0
        for f in folds:
            n_steps = tc.epochs * -(-len(f.train) // tc.batch_size)
            steps += n_steps
            evaluated = len(f.valid) * (tc.epochs + 1) + len(f.test) * len(run.plan.test_sources)
            per_seed += n_steps * flop + evaluated * forward
        rows.append({"job": job.slug, "gflop_per_step": round(flop / 1e9, 3),
                     "ms_per_step": round(1000 * seconds, 1), "steps": steps * len(plan.seeds),
                     "tflop": per_seed * len(plan.seeds) / 1e12,
                     "measured_s": seconds * steps * len(plan.seeds)})
    return rows


def main() -> None:
    import torch

    from koemo.config import Recipe, load_config, resolve_recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-r", "--recipe", default="emotiontts-paper")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--processes", type=int, default=2, help="processes side by side, one thread each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    recipe = load_config(Recipe, resolve_recipe(args.recipe), args.overrides)
    rows = grid_cost(recipe, progress=not args.json)
    rates = {"float32": product_rate(torch.float32), "bfloat16": product_rate(torch.bfloat16)}
    total = sum(r["tflop"] for r in rows)
    measured = sum(r["measured_s"] for r in rows)
    out = {"recipe": recipe.name, "jobs": len(rows), "steps": sum(r["steps"] for r in rows),
           "tflop": round(total, 1), "product_gflops_one_thread": {k: round(v, 1) for k, v in rates.items()},
           "floor_min": {k: round(total * 1e3 / (v * args.processes) / 60, 1) for k, v in rates.items()},
           "steps_as_timed_min": round(measured / args.processes / 60, 1), "processes": args.processes,
           "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'job':<90} {'GFLOP/step':>10} {'ms/step':>8} {'steps':>7} {'TFLOP':>7}")
    for r in sorted(rows, key=lambda r: -r["tflop"]):
        print(f"{r['job']:<90} {r['gflop_per_step']:>10.3f} {r['ms_per_step']:>8.1f} {r['steps']:>7} {r['tflop']:>7.1f}")
    print(f"\n{out['jobs']} jobs, {out['steps']:,} optimiser steps, {total:.1f} TFLOP "
          f"(training steps, validation and test passes)")
    for k, v in rates.items():
        print(f"{k} products: {v:.0f} GFLOP/s a thread -> floor {out['floor_min'][k]:.1f} min on "
              f"{args.processes} processes")
    print(f"the steps as timed here (one thread each, nothing else counted): "
          f"{out['steps_as_timed_min']:.1f} min on {args.processes} processes")


if __name__ == "__main__":
    main()
