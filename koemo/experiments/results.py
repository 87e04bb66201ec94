"""The grid's numbers: per (job, test source) pooled-per-seed metrics, the paper's tables as rows,
Grad-CAM modality shares, and the facts the report states about them."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from koemo.data.splits import text_neutral_ids
from koemo.experiments.grid import TEXT_NEUTRAL, Job, Plan
from koemo.experiments.inputs import Inputs, feature_data
from koemo.experiments.runner import fold_dir, folds_for, job_recipe
from koemo.sources import ASR_PREFIX, TextSource

#: the paper's numbers (weighted F1) for the rows that correspond to ours, for the report
PAPER_TABLE3 = {
    ("text-only", "fasttext-ko"): 0.4116,
    ("text-only", "embeddinggemma-300m"): 0.4463,  # paper: HanBERT
    ("audio-only", "mfcc"): 0.3539,
    ("audio-only", "whisper-base-encoder"): 0.4326,  # paper: wav2vec 2.0
    ("shallow", "mfcc+fasttext-ko"): 0.4364,
    ("shallow", "whisper-base-encoder+embeddinggemma-300m"): 0.4952,
    ("fusion-transformer", "whisper-base-encoder+embeddinggemma-300m"): 0.4906,
    ("mult", "whisper-base-encoder+embeddinggemma-300m"): 0.4893,
}
#: the paper's Table 4 (Google STT, the better of its two recognisers): ASR-trained / CR
PAPER_TABLE4 = {"shallow": (0.4220, 0.4674), "fusion-transformer": (0.4313, 0.4601), "mult": (0.4240, 0.4670)}


def _summary(preds: list, labels: list[str]) -> dict[str, Any]:
    from koemo.metrics import aggregate

    agg = aggregate(preds, labels)
    return {"mean": agg.mean, "std": agg.std, "seeds": agg.seeds, "confusion": agg.confusion.tolist(),
            "per_class_f1": agg.per_class_f1_mean, "per_class_recall": agg.per_class_recall_mean,
            "calibrated": calibrated(preds, labels)}


def calibrated(preds: list, labels: list[str]) -> dict[str, float] | None:
    """ECE and NLL after temperature scaling, cross-fitted within each seed (each fold's predictions
    scaled by the temperature fitted on the seed's other folds), mean over seeds; None when the
    predictions carry no probabilities or a seed has a single fold."""
    from koemo.calibration import cross_fitted, ece, nll

    index = {label: i for i, label in enumerate(labels)}
    out: dict[str, list[float]] = defaultdict(list)
    for seed in sorted({p.seed for p in preds}):
        rows = [p for p in preds if p.seed == seed]
        if any(p.probs is None for p in rows) or len({p.fold for p in rows}) < 2:
            return None
        probs = np.array([p.probs for p in rows])
        y = np.array([index[p.label] for p in rows])
        scaled, temps = cross_fitted(probs, y, [p.fold for p in rows])
        out["ece"].append(ece(scaled, y))
        out["nll"].append(nll(scaled, y))
        out["temperature"].append(float(np.mean(temps)))
    return {k: float(np.mean(v)) for k, v in out.items()} if out else None


def _f1(s: dict | None) -> dict | None:
    if not s:
        return None
    return {"mean": s["mean"]["weighted_f1"], "std": s["std"]["weighted_f1"]}


def modality_shares(plan: Plan, inputs: Inputs, job: Job, source: str) -> dict:
    """Grad-CAM shares at the fusion input for every fold bundle of ``job`` on its test clips read
    with ``source`` text, averaged per true label over all folds and seeds."""
    import torch

    from koemo.evaluation.gradcam import ModalityContribution, per_label_means, modality_contribution
    from koemo.training.bundle import load_bundle

    data, _ = feature_data(job, plan.jobs[job], inputs, job_recipe(plan, job, plan.seeds[0]))
    all_shares, all_true = [], []
    for seed in plan.seeds:
        for fold in folds_for(plan, inputs.utts, job.protocol, seed):
            b = load_bundle(fold_dir(plan.recipe, job, seed, fold.name))
            batches = []
            for i in range(0, len(fold.test), 32):
                ids = fold.test[i:i + 32]
                t = data.batch([(u, source) for u in ids])
                batches.append((t["audio"], t["audio_mask"], t["text"], t["text_mask"], data.y(ids)))
            with torch.no_grad():
                res: ModalityContribution = modality_contribution(b.model, batches, inputs.labels, "pred", at="embed")
            all_shares.append(res.shares)
            all_true.append(res.true)
    per, overall, undefined = per_label_means(np.concatenate(all_shares), np.concatenate(all_true), inputs.labels)
    return {"per_label": per, "overall": overall, "undefined": undefined}


def build_results(plan: Plan, inputs: Inputs, preds: dict, asr_rows: list[dict]) -> dict:
    labels = inputs.labels
    main = plan.main_protocol
    summ: dict[tuple[Job, str], dict] = {k: _summary(v, labels) for k, v in preds.items()}
    neutral = text_neutral_ids(inputs.utts)
    subset = {k: _summary([p for p in v if p.id in neutral], labels)
              for k, v in preds.items() if k[0].protocol == main and any(p.id in neutral for p in v)}
    res: dict[str, Any] = {"labels": labels, "table3": [], "table4": [], "asr": asr_rows, "snr": [],
                           "protocols": [], "naive": []}
    service = plan.recipe.eval.text
    for m in plan.table3:
        s = summ[(Job(m, "gold", main), "gold")]
        tested = service if m.text and (Job(m, "gold", main), service) in summ else "gold"
        res["table3"].append({"model": m.fusion, "speech": m.speech, "text": m.text, "key": m.key,
                              "mean": s["mean"], "std": s["std"], "per_class_f1": s["per_class_f1"],
                              "calibrated": s["calibrated"], "paper": PAPER_TABLE3.get((m.fusion, m.encoders)),
                              "service_text": tested,
                              "text_neutral": _f1(summ.get((Job(m, "gold", TEXT_NEUTRAL), tested))),
                              "text_neutral_subset": _f1(subset.get((Job(m, "gold", main), tested)))})
    cer = {r["condition"]: r["cer"] for r in asr_rows}
    for source in plan.asr_sources:
        for m in plan.table4:
            gold = summ[(Job(m, "gold", main), "gold")]
            naive = summ[(Job(m, "gold", main), source)]
            a = summ[(Job(m, source, main), source)]
            c = summ[(Job(m, f"cr:{source}", main), source)]
            paper = PAPER_TABLE4.get(m.fusion)
            res["table4"].append({
                "asr": str(TextSource.parse(source))[len(ASR_PREFIX):], "source": source, "model": m.fusion, "key": m.key, "cer": cer.get(source),
                "gold": {"mean": gold["mean"]["weighted_f1"], "std": gold["std"]["weighted_f1"]},
                "gold_on_asr": {"mean": naive["mean"]["weighted_f1"], "std": naive["std"]["weighted_f1"]},
                "asr_trained": {"mean": a["mean"]["weighted_f1"], "std": a["std"]["weighted_f1"]},
                "cr": {"mean": c["mean"]["weighted_f1"], "std": c["std"]["weighted_f1"]},
                "asr_trained_ua": a["mean"]["unweighted_accuracy"], "cr_ua": c["mean"]["unweighted_accuracy"],
                "recovered_share": _share(gold["mean"]["weighted_f1"], a["mean"]["weighted_f1"], c["mean"]["weighted_f1"]),
                "cr_ece": c["mean"].get("ece"), "cr_calibrated": c["calibrated"],
                "cr_text_neutral": _f1(summ.get((Job(m, f"cr:{source}", TEXT_NEUTRAL), source))),
                "asr_text_neutral": _f1(summ.get((Job(m, source, TEXT_NEUTRAL), source))),
                "cr_text_neutral_subset": _f1(subset.get((Job(m, f"cr:{source}", main), source))),
                "paper": {"asr_trained": paper[0], "cr": paper[1]} if paper else None,
            })
    if plan.snr_model is not None:
        m = plan.snr_model
        for snr, source in plan.snr_sources:
            point: dict[str, Any] = {"snr": snr, "source": source, "cer": cer.get(source)}
            for key, train in (("asr", source), ("cr", f"cr:{source}"), ("gold", "gold")):
                s = summ.get((Job(m, train, main), source))
                if s:
                    point[key] = {"mean": s["mean"]["weighted_f1"], "std": s["std"]["weighted_f1"]}
            res["snr"].append(point)
        g = summ.get((Job(m, "gold", main), "gold"))
        res["snr_reference"] = g["mean"]["weighted_f1"] if g else None
    for p in [main] + plan.protocols:
        for m in plan.protocol_models:
            s = summ[(Job(m, "gold", p), "gold")]
            res["protocols"].append({"protocol": p, "model": m.key, "mean": s["mean"], "std": s["std"]})
    headline = [(Job(m, f"cr:{service}", main), service) for m in plan.table4 if service in plan.asr_sources]
    headline += [(Job(m, "gold", main), "gold") for m in plan.table3]
    for job, source in headline:
        if preds.get((job, source)) and all(p.probs is not None for p in preds[(job, source)]):
            res["reliability"] = reliability_of(preds[(job, source)], labels, f"{job.model.key}, trained on "
                                                f"{job.train_text}, tested on {source}")
            break
    res["_summaries"] = summ
    return res


def reliability_of(preds: list, labels: list[str], title: str) -> dict[str, Any]:
    """Reliability bins of pooled predictions, raw and after the cross-fitted temperature (per seed)."""
    from koemo.calibration import cross_fitted, reliability

    index = {label: i for i, label in enumerate(labels)}
    raw, scaled, ys = [], [], []
    for seed in sorted({p.seed for p in preds}):
        rows = [p for p in preds if p.seed == seed]
        probs = np.array([p.probs for p in rows])
        y = np.array([index[p.label] for p in rows])
        raw.append(probs)
        scaled.append(cross_fitted(probs, y, [p.fold for p in rows])[0] if len({p.fold for p in rows}) > 1 else probs)
        ys.append(y)
    y = np.concatenate(ys)
    out: dict[str, Any] = {"title": title}
    for name, probs in (("raw", np.concatenate(raw)), ("temperature-scaled", np.concatenate(scaled))):
        r = reliability(probs, y)
        out[name] = {"confidence": r.confidence.tolist(), "accuracy": r.accuracy.tolist(),
                     "count": r.count.tolist(), "ece": r.ece}
    return out


def _share(gold: float, asr: float, cr: float) -> float | None:
    """The share of the ASR drop (human-trained on human text minus ASR-trained) that CR recovers."""
    drop = gold - asr
    return None if drop <= 0 else (cr - asr) / drop


def auto_commentary(res: dict, plan: Plan) -> str:
    """Facts computed from the numbers (the human commentary goes in results/COMMENTARY.md)."""
    lines = []
    if res["table3"]:
        best = max(res["table3"], key=lambda r: r["mean"]["weighted_f1"])
        lines.append(f"- Best Table 3 model: {best['key']} at {best['mean']['weighted_f1']:.4f} weighted F1 "
                     f"(paper's best: 0.4952, shallow fusion).")
    if res["table4"]:
        drops = [r["asr_trained"]["mean"] - r["gold"]["mean"] for r in res["table4"]]
        crs = [r["cr"]["mean"] - r["gold"]["mean"] for r in res["table4"]]
        rec = [r["cr"]["mean"] - r["asr_trained"]["mean"] for r in res["table4"]]
        wins = sum(x > 0 for x in rec)
        lines.append(f"- Against the same model on human text, training and testing on ASR text changes weighted F1 "
                     f"by {100 * np.mean(drops):+.1f} pt on average (paper: -5.9 to -8.3 pt), with CR by "
                     f"{100 * np.mean(crs):+.1f} pt; CR recovers {100 * np.mean(rec):+.1f} pt on average and beats "
                     f"ASR-trained in {wins} of {len(rec)} rows (paper: +2.4 to +4.6 pt, 6 of 6).")
    main = plan.main_protocol
    by = defaultdict(dict)
    for r in res["protocols"]:
        by[r["model"]][r["protocol"]] = r["mean"]["weighted_f1"]
    for model, vals in by.items():
        if main in vals:
            other = ", ".join(f"{p} {100 * (v - vals[main]):+.1f} pt" for p, v in vals.items() if p != main)
            if other:
                lines.append(f"- Leakage, {model}: {main} {vals[main]:.4f}; {other}.")
    return "\n".join(lines)


