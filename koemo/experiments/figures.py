"""The report's figures: confusion matrices (the paper's Figure 7), Grad-CAM modality shares
(Figure 6) and the SNR curve, as PNG files under ``<out>/figures``."""

from __future__ import annotations

import re
from pathlib import Path

from koemo.experiments.grid import Job, Plan
from koemo.experiments.inputs import Inputs
from koemo.experiments.results import modality_shares


def make_figures(plan: Plan, inputs: Inputs, res: dict, out_dir: Path, gradcam: bool = True) -> list[dict]:
    from koemo.evaluation.plots import plot_confusions, plot_modality, plot_reliability, plot_snr_curve

    figs = []
    labels = inputs.labels
    main = plan.main_protocol
    summ = res["_summaries"]
    fig_dir = out_dir / "figures"
    if plan.table4 and plan.asr_sources:
        source = plan.recipe.eval.text if plan.recipe.eval.text in plan.asr_sources else plan.asr_sources[0]
        # every Table 4 fusion gets its figures; the first keeps the plain file names
        for k, m in enumerate(plan.table4):
            tag = "" if k == 0 else "-" + re.sub(r"[^a-z0-9]+", "-", m.fusion.lower()).strip("-")
            panels = [("human text (trained on human text)", summ[(Job(m, "gold", main), "gold")]["confusion"]),
                      (f"{source} (trained on {source})", summ[(Job(m, source, main), source)]["confusion"]),
                      (f"{source} + consistency reg.", summ[(Job(m, f"cr:{source}", main), source)]["confusion"])]
            plot_confusions(panels, labels, fig_dir / f"confusion{tag}.png",
                            suptitle=f"{m.key}: confusion matrices, all seeds (rows: true label)")
            figs.append({"path": f"figures/confusion{tag}.png",
                         "caption": f"Figure 7 analogue: {m.fusion} on human text, on {source} text, and with CR "
                                    "(row-normalised; counts summed over seeds)"})
            if not gradcam:
                continue
            shares = {}
            for name, job, src in (("human text", Job(m, "gold", main), "gold"),
                                   (f"CR on {source}", Job(m, f"cr:{source}", main), source)):
                shares[name] = modality_shares(plan, inputs, job, src)
                safe = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                plot_modality(shares[name]["per_label"], fig_dir / f"modality{tag}-{safe}.png", labels=labels,
                              title=f"{m.fusion}, {name}: share of the decision (gradient x activation)")
                figs.append({"path": f"figures/modality{tag}-{safe}.png",
                             "caption": f"Figure 6 analogue: audio vs. text share per true label, {m.fusion} "
                                        f"{name} (fusion input, predicted class)"})
            if k == 0:
                res["modality"] = shares
            res.setdefault("modality_by_fusion", {})[m.fusion] = shares
    if res.get("snr"):
        plot_snr_curve(res["snr"], fig_dir / "snr.png",
                       series=(("asr", "trained on ASR text"), ("cr", "with consistency regularization"),
                               ("gold", "trained on human text")),
                       reference=res.get("snr_reference"),
                       title=f"{plan.snr_model.fusion}: weighted F1 vs. SNR ({plan.recipe.eval.snr_noise} noise, "
                             f"{plan.recipe.eval.snr_backend})")
        figs.append({"path": "figures/snr.png", "caption": "Weighted F1 against SNR, with the ASR CER (right axis)"})
    if res.get("reliability"):
        rel = res["reliability"]
        plot_reliability(rel, fig_dir / "reliability.png")
        figs.append({"path": "figures/reliability.png",
                     "caption": f"Reliability diagram, {rel['title']}: accuracy per confidence bin, raw "
                                f"(ECE {rel['raw']['ece']:.3f}) and temperature-scaled "
                                f"(ECE {rel['temperature-scaled']['ece']:.3f}); bars: share of predictions"})
    return figs
