"""Classification metrics for emotion recognition, as the paper defines them and as the SER field
reports them, computed from a confusion matrix so every number can be checked by hand.

Notation: ``C[i, j]`` is the number of test utterances whose true label is ``labels[i]`` and whose
predicted label is ``labels[j]``; ``n_i = sum_j C[i, j]`` is class i's support, ``N = sum_i n_i``,
``TP_i = C[i, i]``, ``pred_i = sum_j C[j, i]``.

- precision_i = TP_i / pred_i (0 when nothing was predicted as i),
  recall_i = TP_i / n_i (0 when i has no support), F1_i = 2 p r / (p + r) (0 when p + r = 0).
- **Weighted F1** (the paper's headline metric): ``sum_i (n_i / N) * F1_i``, per-class F1 weighted
  by the class's share of the test set (``sklearn``'s ``average="weighted"``).
- **Weighted accuracy** (the paper's "Acc"): per-class accuracy weighted the same way,
  ``sum_i (n_i / N) * acc_i``. *Per-class accuracy* here means the fraction of class i's test
  utterances that were classified correctly, ``acc_i = TP_i / n_i`` (class i's recall). This is the
  reading under which the paper's Table 3 makes sense: its Acc column sits a few tenths of a point
  above its F1 column (0.4989 vs 0.4952), as plain accuracy does. The other possible reading,
  one-vs-rest binary accuracy ``(TP_i + TN_i) / N``, would give about 0.8 for six classes at that
  F1, far from any number in the paper; it is still reported per class as ``ovr_accuracy`` so the
  difference is visible. Under the chosen reading the weighted accuracy is algebraically equal to
  plain accuracy: ``sum_i (n_i / N) (TP_i / n_i) = sum_i TP_i / N``, which is why the authors' code,
  which computes plain accuracy, reports the same number the paper defines. Both keys are kept
  (``weighted_accuracy`` and ``accuracy``) so tables can quote either name; tests check they agree.
- **Unweighted accuracy** (UA, the SER field's usual second number): macro recall,
  ``mean_i TP_i / n_i``, each class counting the same whatever its size.
- **Macro F1**: ``mean_i F1_i``.

Macro averages (UA, macro F1) run over the classes that occur in the test set (``n_i > 0``): a
class with no test utterance has no recall to average. Predictions of such a class still count as
errors against the true class.

Across seeds (:func:`aggregate`): within a seed, the predictions of all folds are pooled (in the
cross-validation protocols every clip is tested exactly once per seed, so the pooled set is the
whole dataset) and the metrics are computed once from the pooled confusion matrix; then the mean
and the sample standard deviation (``ddof=1``; 0 for a single seed) are taken across seeds. This is
the paper's "5 repetitions, mean and standard deviation", with each repetition a full pass over the
data rather than one small fold, which keeps per-fold class imbalance out of the spread.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from koemo.errors import BadInputError, KoemoError

SCALARS = (
    "weighted_f1",
    "weighted_accuracy",
    "accuracy",
    "unweighted_accuracy",
    "macro_f1",
)


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Counts ``C[i, j]``: true ``labels[i]`` predicted as ``labels[j]``."""
    if len(y_true) != len(y_pred):
        raise KoemoError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        for name, value in (("true label", t), ("prediction", p)):
            if value not in index:
                raise KoemoError(f"{name} {value!r} is not in the label list ({', '.join(labels)})")
        cm[index[t], index[p]] += 1
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` in float64 whatever ``num``'s type (counts too), 0 where ``den`` is not positive."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall view); an empty row stays zeros."""
    cm = np.asarray(cm)
    return _safe_div(cm, cm.sum(axis=1, keepdims=True))


@dataclass
class Metrics:
    """Every number of one evaluation, derived from one confusion matrix."""

    labels: list[str]
    confusion: np.ndarray  # counts, rows = true, columns = predicted
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    ovr_accuracy: np.ndarray  # one-vs-rest (TP + TN) / N per class, for reference only
    weighted_f1: float
    weighted_accuracy: float
    accuracy: float
    unweighted_accuracy: float
    macro_f1: float
    n: int
    nll: float | None = None  # mean negative log-likelihood of the true label, when probs given
    ece: float | None = None  # expected calibration error (15 bins, koemo.calibration), when probs given

    @property
    def confusion_normalised(self) -> np.ndarray:
        return row_normalise(self.confusion)

    def scalars(self) -> dict[str, float]:
        out = {k: float(getattr(self, k)) for k in SCALARS}
        if self.nll is not None:
            out["nll"] = float(self.nll)
        if self.ece is not None:
            out["ece"] = float(self.ece)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.scalars(),
            "n": self.n,
            "labels": list(self.labels),
            "per_class": {
                label: {
                    "precision": float(self.precision[i]),
                    "recall": float(self.recall[i]),
                    "f1": float(self.f1[i]),
                    "support": int(self.support[i]),
                    "ovr_accuracy": float(self.ovr_accuracy[i]),
                }
                for i, label in enumerate(self.labels)
            },
            "confusion": self.confusion.astype(int).tolist(),
            "confusion_normalised": [[round(float(x), 6) for x in row] for row in self.confusion_normalised],
        }


def metrics_from_confusion(cm: np.ndarray, labels: Sequence[str], nll: float | None = None,
                           ece: float | None = None) -> Metrics:
    """All metrics from a confusion matrix (see the module docstring for the definitions)."""
    cm = np.asarray(cm, dtype=np.int64)
    k = len(labels)
    if cm.shape != (k, k):
        raise KoemoError(f"confusion matrix is {cm.shape}, expected {k}x{k} for {k} labels")
    n = int(cm.sum())
    if n == 0:
        raise KoemoError("no predictions to evaluate")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    tn = n - support - predicted + tp
    ovr = (tp + tn) / n
    share = support / n
    present = support > 0
    return Metrics(
        labels=list(labels),
        confusion=cm,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        ovr_accuracy=ovr,
        weighted_f1=float(np.sum(share * f1)),
        weighted_accuracy=float(np.sum(share * recall)),
        accuracy=float(tp.sum() / n),
        unweighted_accuracy=float(recall[present].mean()),
        macro_f1=float(f1[present].mean()),
        n=n,
        nll=nll,
        ece=ece,
    )


def compute_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    probs: Sequence[Sequence[float]] | np.ndarray | None = None,
) -> Metrics:
    """Metrics of predictions ``y_pred`` against ``y_true`` over ``labels``.

    ``probs`` (optional, ``[N, len(labels)]`` in label order) adds the mean negative
    log-likelihood of the true label (probabilities clipped at 1e-12) and the expected
    calibration error (:mod:`koemo.calibration`).
    """
    cm = confusion_matrix(y_true, y_pred, labels)
    nll = ece = None
    if probs is not None:
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (len(y_true), len(labels)):
            raise KoemoError(f"probabilities are {p.shape}, expected ({len(y_true)}, {len(labels)})")
        index = {label: i for i, label in enumerate(labels)}
        rows = np.arange(len(y_true))
        cols = np.array([index[t] for t in y_true])
        nll = float(-np.log(np.clip(p[rows, cols], 1e-12, 1.0)).mean())
        from koemo.calibration import ece as expected_calibration_error

        ece = expected_calibration_error(p, cols)
    return metrics_from_confusion(cm, labels, nll, ece)


# ---------------------------------------------------------------------------------------------
# predictions files


@dataclass
class Prediction:
    id: str
    label: str
    pred: str
    probs: list[float] | None = None
    seed: int = 0
    fold: str = ""
    extra: dict = field(default_factory=dict)


def read_predictions(path: str | Path) -> list[Prediction]:
    """A predictions JSONL: one object per line with ``id, label, pred`` and optional
    ``probs`` (list in label order), ``seed``, ``fold``. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "predictions file not found")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(where, f"not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise BadInputError(where, "expected a JSON object")
        missing = [k for k in ("id", "label", "pred") if k not in obj]
        if missing:
            raise BadInputError(where, f"missing field {missing[0]!r}")
        probs = obj.get("probs")
        if probs is not None and (
            not isinstance(probs, list) or not all(isinstance(x, (int, float)) for x in probs)
        ):
            raise BadInputError(where, "'probs' must be a list of numbers")
        known = {"id", "label", "pred", "probs", "seed", "fold"}
        out.append(
            Prediction(
                id=str(obj["id"]),
                label=str(obj["label"]),
                pred=str(obj["pred"]),
                probs=[float(x) for x in probs] if probs is not None else None,
                seed=int(obj.get("seed", 0)),
                fold=str(obj.get("fold", "")),
                extra={k: v for k, v in obj.items() if k not in known},
            )
        )
    if not out:
        raise BadInputError(path, "no predictions in file")
    return out


def write_predictions(path: str | Path, preds: Iterable[Prediction]) -> Path:
    from koemo.paths import atomic_write_text

    lines = []
    for p in preds:
        obj: dict[str, Any] = {"id": p.id, "label": p.label, "pred": p.pred}
        if p.probs is not None:
            obj["probs"] = [round(float(x), 6) for x in p.probs]
        obj["seed"] = p.seed
        if p.fold:
            obj["fold"] = p.fold
        obj.update(p.extra)
        lines.append(json.dumps(obj, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def metrics_of(preds: Sequence[Prediction], labels: Sequence[str]) -> Metrics:
    """Metrics of a pooled list of predictions (all folds of one seed, say)."""
    probs = None
    if preds and all(p.probs is not None for p in preds):
        probs = np.array([p.probs for p in preds], dtype=np.float64)
    try:
        return compute_metrics([p.label for p in preds], [p.pred for p in preds], labels, probs)
    except KoemoError as e:
        raise KoemoError(f"predictions: {e}") from None


# ---------------------------------------------------------------------------------------------
# across seeds


@dataclass
class Aggregate:
    """Mean and standard deviation across seeds of each scalar metric, plus the per-seed values,
    the summed confusion matrix and per-class F1 / recall means."""

    labels: list[str]
    seeds: list[int]
    per_seed: dict[int, Metrics]
    mean: dict[str, float]
    std: dict[str, float]
    confusion: np.ndarray  # summed over seeds
    per_class_f1_mean: dict[str, float]
    per_class_recall_mean: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "seeds": self.seeds,
            "mean": self.mean,
            "std": self.std,
            "per_seed": {str(s): m.scalars() for s, m in self.per_seed.items()},
            "confusion": self.confusion.astype(int).tolist(),
            "confusion_normalised": [[round(float(x), 6) for x in r] for r in row_normalise(self.confusion)],
            "per_class_f1_mean": self.per_class_f1_mean,
            "per_class_recall_mean": self.per_class_recall_mean,
        }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for fewer than two values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate_metrics(per_seed: Mapping[int, Metrics]) -> Aggregate:
    """Mean ± std across seeds of already pooled per-seed metrics."""
    if not per_seed:
        raise KoemoError("no seeds to aggregate")
    seeds = sorted(per_seed)
    labels = per_seed[seeds[0]].labels
    for s in seeds:
        if per_seed[s].labels != labels:
            raise KoemoError(f"seed {s} was evaluated on a different label list")
    keys = list(per_seed[seeds[0]].scalars())
    mean, std = {}, {}
    for key in keys:
        vals = [per_seed[s].scalars()[key] for s in seeds if key in per_seed[s].scalars()]
        mean[key], std[key] = mean_std(vals)
    f1 = np.mean([per_seed[s].f1 for s in seeds], axis=0)
    rec = np.mean([per_seed[s].recall for s in seeds], axis=0)
    return Aggregate(
        labels=list(labels),
        seeds=seeds,
        per_seed=dict(per_seed),
        mean=mean,
        std=std,
        confusion=np.sum([per_seed[s].confusion for s in seeds], axis=0),
        per_class_f1_mean={label: float(f1[i]) for i, label in enumerate(labels)},
        per_class_recall_mean={label: float(rec[i]) for i, label in enumerate(labels)},
    )


def aggregate(preds: Sequence[Prediction], labels: Sequence[str]) -> Aggregate:
    """Pool each seed's predictions (all its folds), compute metrics per seed, then mean ± std.

    An utterance tested twice within one seed is an error (the folds of a seed must not overlap).
    """
    by_seed: dict[int, list[Prediction]] = {}
    for p in preds:
        by_seed.setdefault(p.seed, []).append(p)
    for seed, rows in by_seed.items():
        ids = [p.id for p in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise KoemoError(f"seed {seed}: utterance {dup!r} was tested more than once")
    return aggregate_metrics({s: metrics_of(rows, labels) for s, rows in by_seed.items()})
