"""Calibrated probabilities: expected calibration error, reliability bins, temperature scaling.

- **ECE** (15 equal-width confidence bins, Guo et al. 2017): ``sum_b (n_b / N) |acc_b - conf_b|``
  where ``conf_b`` is the mean top probability of the predictions whose top probability falls in
  bin b and ``acc_b`` the share of them that are right.
- **Temperature scaling**: probabilities ``softmax(log p / T)``; one ``T > 0`` fitted by minimising
  the negative log-likelihood of held-out predictions (a 1-D search over ``log T``), so the
  ranking of the classes, hence every label and F1, is unchanged. ``T > 1`` softens an
  over-confident model. The bundle stores ``T``; ``predict`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from koemo.errors import KoemoError

BINS = 15


def _check(probs, y) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise KoemoError(f"calibration needs probabilities [N, C] and N labels, got {p.shape} and {y.shape}")
    return p, y


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and count (empty bins have count 0)."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        n = self.count.sum()
        return float(np.sum(self.count / n * np.abs(self.accuracy - self.confidence))) if n else float("nan")


def reliability(probs, y, bins: int = BINS) -> Reliability:
    p, y = _check(probs, y)
    conf = p.max(axis=1)
    right = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return Reliability(edges, np.bincount(which, conf, bins) / safe, np.bincount(which, right, bins) / safe, count)


def ece(probs, y, bins: int = BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins."""
    return reliability(probs, y, bins).ece


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row (probabilities clipped at 1e-12 before the log)."""
    if not temperature > 0:
        raise KoemoError(f"temperature must be > 0, got {temperature}")
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs, y) -> float:
    p, y = _check(probs, y)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def fit_temperature(probs, y, lo: float = 0.05, hi: float = 20.0) -> float:
    """The ``T`` in ``[lo, hi]`` that minimises the NLL of ``probs`` scaled by it (golden-section
    search on ``log T``; the NLL is convex in ``1/T``)."""
    p, y = _check(probs, y)
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    f = lambda t: nll(apply_temperature(p, float(np.exp(t))), y)  # noqa: E731
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2))


def cross_fitted(probs, y, groups) -> tuple[np.ndarray, list[float]]:
    """Held-out calibration of pooled cross-validation predictions: each group's (fold's)
    probabilities scaled by the temperature fitted on the *other* groups' predictions, so no
    prediction is calibrated on itself. Returns the scaled probabilities and the temperatures."""
    p, y = _check(probs, y)
    groups = np.asarray(groups)
    out = np.empty_like(p)
    temps = []
    for g in sorted(set(groups.tolist())):
        inside = groups == g
        if inside.all():  # one group: nothing else to fit on
            out[inside] = p[inside]
            temps.append(1.0)
            continue
        t = fit_temperature(p[~inside], y[~inside])
        out[inside] = apply_temperature(p[inside], t)
        temps.append(t)
    return out, temps
