"""Analysis figures as PNG (matplotlib, Agg backend, no display needed).

- :func:`plot_confusions`: one or more row-normalised confusion matrices side by side (the
  paper's Figure 7: human text / ASR text / ASR text + consistency regularization).
- :func:`plot_modality`: per-label audio vs. text share of the decision (the paper's Figure 6).
- :func:`plot_snr_curve`: weighted F1 against SNR for ASR-trained and CR-trained models, with the
  ASR's CER on a second axis.

Labels are the English canonical emotion names, so no CJK font is needed. Every figure is written
atomically (temp file + rename) and the path is returned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from koemo.metrics import row_normalise
from koemo.paths import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 120) -> Path:
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusions(
    panels: Sequence[tuple[str, np.ndarray]],
    labels: Sequence[str],
    path: str | Path,
    suptitle: str | None = None,
) -> Path:
    """Row-normalised confusion matrices (rows = true label) side by side; each cell shows the
    percentage of the true class and, below it, the count."""
    plt = _pyplot()
    n = len(panels)
    k = len(labels)
    size = 1.0 + 0.75 * k
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.6, size + 0.4), squeeze=False)
    for ax, (title, cm) in zip(axes[0], panels):
        cm = np.asarray(cm)
        norm = row_normalise(cm)
        ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
        for i in range(k):
            for j in range(k):
                colour = "white" if norm[i, j] > 0.55 else "black"
                ax.text(j, i, f"{100 * norm[i, j]:.1f}%\n({int(cm[i, j])})", ha="center", va="center",
                        fontsize=8, color=colour)
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return _save(fig, path)


def plot_modality(
    per_label: Mapping[str, Mapping[str, float]],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title: str = "Modality contribution (gradient x activation)",
) -> Path:
    """Stacked bars per label: audio share (bottom) and text share (top), in percent."""
    plt = _pyplot()
    labels = [lab for lab in (labels or list(per_label)) if lab in per_label]
    audio = np.array([100 * per_label[lab]["audio"] for lab in labels])
    text = np.array([100 * per_label[lab]["text"] for lab in labels])
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * max(len(labels), 2), 3.6))
    x = np.arange(len(labels))
    ax.bar(x, audio, color="#4c72b0", label="audio")
    ax.bar(x, text, bottom=audio, color="#dd8452", label="text")
    for xi, a in zip(x, audio):
        ax.text(xi, a / 2, f"{a:.1f}", ha="center", va="center", color="white", fontsize=8)
        ax.text(xi, a + (100 - a) / 2, f"{100 - a:.1f}", ha="center", va="center", color="black", fontsize=8)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of the decision (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_snr_curve(
    points: Sequence[Mapping],
    path: str | Path,
    series: Sequence[tuple[str, str]] = (("asr", "trained on ASR text"), ("cr", "with consistency regularization")),
    reference: float | None = None,
    title: str = "Weighted F1 against SNR",
) -> Path:
    """``points``: ``{"snr": dB (None or inf = clean), "cer": fraction, key: {"mean", "std"}}``
    for each series key. ``reference``: a horizontal line (e.g. the human-transcript F1)."""
    plt = _pyplot()

    def snr_of(p):
        s = p.get("snr")
        return math.inf if s is None else float(s)

    pts = sorted(points, key=snr_of)
    finite = [snr_of(p) for p in pts if math.isfinite(snr_of(p))]
    step = (max(finite) - min(finite)) / max(len(finite) - 1, 1) if len(finite) > 1 else 10.0
    clean_x = (max(finite) + max(step, 5.0)) if finite else 0.0
    xs = [snr_of(p) if math.isfinite(snr_of(p)) else clean_x for p in pts]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    markers = ("o", "s", "^", "D")
    for (key, name), marker in zip(series, markers):
        have = [(x, p[key]) for x, p in zip(xs, pts) if p.get(key)]
        if not have:
            continue
        ax.errorbar([x for x, _ in have], [v["mean"] for _, v in have], yerr=[v.get("std", 0.0) for _, v in have],
                    marker=marker, capsize=3, label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=0.8, label="human transcript")
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("weighted F1")
    ticks = [f"{x:g}" for x in xs]
    ticks = ["clean" if not math.isfinite(snr_of(p)) else t for p, t in zip(pts, ticks)]
    ax.set_xticks(xs, ticks)
    cer = [(x, 100 * p["cer"]) for x, p in zip(xs, pts) if p.get("cer") is not None]
    if cer:
        ax2 = ax.twinx()
        ax2.plot([x for x, _ in cer], [c for _, c in cer], color="#c44e52", ls=":", marker="x", label="ASR CER")
        ax2.set_ylabel("CER (%)", color="#c44e52")
        ax2.tick_params(axis="y", colors="#c44e52")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
    else:
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(rel: dict, path: str | Path) -> Path:
    """Accuracy against confidence per bin for the ``raw`` and ``temperature-scaled`` curves of
    ``rel`` (:func:`koemo.experiments.results.reliability_of`), the diagonal, and the share of
    predictions per bin underneath."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, style in (("raw", "o-"), ("temperature-scaled", "s-")):
        curve = rel.get(name)
        if not curve:
            continue
        count = np.asarray(curve["count"])
        used = count > 0
        ax.plot(np.asarray(curve["confidence"])[used], np.asarray(curve["accuracy"])[used], style,
                label=f"{name} (ECE {curve['ece']:.3f})")
        hist.bar(np.linspace(0, 1, len(count) + 1)[:-1] + 0.5 / len(count), count / max(count.sum(), 1),
                 width=1 / len(count), alpha=0.4, label=name)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(rel.get("title", "reliability")[:80], fontsize=9)
    hist.set_xlabel("confidence (top probability)")
    hist.set_ylabel("share")
    fig.tight_layout()
    return _save(fig, path)
