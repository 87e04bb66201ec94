"""``koemo reproduce``: the paper's experiments on a recipe's data as one resumable command.

The grid comes from the recipe's ``eval`` section (:mod:`koemo.experiments.grid`); its inputs
are prepared once (:mod:`koemo.experiments.inputs`), its folds trained or reused
(:mod:`koemo.experiments.runner`), scored (:mod:`koemo.experiments.results`), drawn
(:mod:`koemo.experiments.figures`) and written up (:mod:`koemo.experiments.report`):
``results.json``, ``REPORT.md``/``.html`` and ``figures/`` under ``--out``.

Every (model, training text, protocol) is trained for ``eval.seeds`` seeds; seed ``s`` redraws
the folds (``split.seed = s``) and the initialisation (``train.seed = s``). In the
cross-validation protocols every clip is tested once per seed; predictions are pooled per seed,
scored, and mean ± std taken over seeds (:mod:`koemo.metrics`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from koemo.config import Recipe
from koemo.experiments.figures import make_figures
from koemo.experiments.grid import make_plan
from koemo.experiments.inputs import load_inputs, prepare_inputs, save_inputs
from koemo.experiments.results import auto_commentary, build_results
from koemo.experiments.runner import parse_shard, run_jobs, training_seconds

log = logging.getLogger("koemo")


def reproduce(recipe: Recipe, out_dir: str | Path = "results", data_dir: str | None = None,
              progress: bool = True, command: str = "", gradcam: bool = True,
              inputs_path: str | Path | None = None, save_inputs_path: str | Path | None = None,
              shard: str | None = None, prepare_only: bool = False, only: str | None = None) -> dict:
    """Run the grid (see the module docstring), write ``results.json``, figures and the report.

    ``save_inputs_path`` writes the prepared inputs to a pack; ``inputs_path`` reads one instead
    of transcribing and encoding (no ASR or encoder weights needed); ``shard`` ``"I/N"`` trains
    one share of the grid and writes no report (see :func:`run_jobs`), as does ``only`` (a regular
    expression: train just the jobs whose slug matches); ``prepare_only`` stops
    after the transcripts and features (and the pack)."""
    from koemo.experiments.report import write_report
    from koemo.paths import atomic_write_text

    t0 = time.time()
    out_dir = Path(out_dir)
    plan = make_plan(recipe)
    shard_of = parse_shard(shard)
    log.info("reproduce: %d jobs x %d seeds, main protocol %s", len(plan.jobs), len(plan.seeds), plan.main_protocol)
    if inputs_path:
        inputs = load_inputs(inputs_path, plan)
        asr_rows = inputs.asr_rows
    else:
        inputs, asr_rows = prepare_inputs(plan, data_dir, progress)
    if save_inputs_path:
        save_inputs(inputs, save_inputs_path)
        log.info("inputs pack written: %s", save_inputs_path)
    if prepare_only:
        return {"prepared": True, "meta": {"wall_time_s": round(time.time() - t0, 1)}}
    preds = run_jobs(plan, inputs, progress, shard=shard_of, only=only)
    if shard_of is not None or only is not None:
        return {"shard": shard, "only": only, "meta": {"wall_time_s": round(time.time() - t0, 1)}}
    res = build_results(plan, inputs, preds, asr_rows)
    figures = make_figures(plan, inputs, res, out_dir, gradcam=gradcam)
    import torch

    machine = (f"{platform.machine()} {platform.processor() or _cpu_model()}, {os.cpu_count()} CPUs, "
               f"torch {torch.__version__} ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})")
    if recipe.train.device.startswith("cuda") and torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    meta = {
        "command": command or f"koemo reproduce --recipe {recipe.name}",
        "machine": machine,
        "wall_time_s": round(time.time() - t0, 1),
        "training_s": round(training_seconds(plan, inputs), 1),
        "dataset": f"{recipe.data.dataset} ({len(inputs.utts)} utterances, labels {', '.join(inputs.labels)})",
        "protocol": plan.main_protocol,
        "seeds": plan.seeds,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "training": f"{recipe.train.epochs} epochs, lr {recipe.train.lr:g}, batch {recipe.train.batch_size}, "
                    f"CR lambda {recipe.train.cr_lambda:g} ({recipe.train.cr_kl}, CE on {recipe.train.cr_ce_path}), "
                    f"{recipe.train.precision}",
        "model": f"hidden {recipe.model.hidden}, {recipe.model.layers} layer(s), {recipe.model.heads} heads, "
                 f"audio_pool {recipe.model.audio_pool}",
    }
    summaries = res.pop("_summaries")
    detail = dict(sorted((f"{job.slug}|{source}", s) for (job, source), s in summaries.items()))  # stable diffs
    commentary_file = out_dir / "COMMENTARY.md"
    commentary = commentary_file.read_text(encoding="utf-8") if commentary_file.is_file() else ""
    facts = auto_commentary(res, plan)
    report = {
        "title": f"koemo: the paper's experiments on {recipe.name}",
        "meta": meta,
        "table3": res["table3"],
        "table4": res["table4"],
        "asr": res["asr"],
        "snr": res["snr"],
        "protocols": res["protocols"],
        "figures": figures,
        "commentary": (commentary.strip() + "\n\n" if commentary else "")
        + "Computed from this run:\n\n" + facts,
    }
    naive = [r for r in res["table4"]]
    if naive:
        report["intro"] = ("Human-trained models tested on ASR text (the naive deployment): " + "; ".join(
            f"{r['model']} on {r['asr']} {r['gold_on_asr']['mean']:.4f}" for r in naive) + ".")
    doc = {"meta": meta, "plan": {"jobs": sorted(j.slug for j in plan.jobs), "seeds": plan.seeds},
           **{k: v for k, v in res.items()}, "figures": figures, "detail": detail}
    atomic_write_text(out_dir / "results.json", json.dumps(doc, ensure_ascii=False, indent=1, default=_json_default))
    write_report(report, out_dir)
    return doc


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(type(o).__name__)

