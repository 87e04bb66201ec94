"""How the metrics travel: probabilities from predictions into NLL and ECE and on through the
seed aggregate, the exact numbers and types of the serialised forms, and every refusal word for
word. Written for the surviving mutants of ``koemo/metrics.py`` (docs/testing.md);
tests/test_metrics.py has the hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from koemo.calibration import ece as expected_calibration_error
from koemo.errors import KoemoError
from koemo.metrics import (Prediction, aggregate, aggregate_metrics, compute_metrics, confusion_matrix,
                           metrics_from_confusion, metrics_of, read_predictions, write_predictions)

LABELS = ["a", "b", "c"]
TRUE = ["a", "a", "b", "b", "c", "c"]
PROBS = [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]


def preds_of(seed: int, probs=PROBS) -> list[Prediction]:
    return [Prediction(f"u{i}", t, LABELS[int(np.argmax(p))], probs=list(p), seed=seed)
            for i, (t, p) in enumerate(zip(TRUE, probs))]


def expected_nll(probs) -> float:
    return float(np.mean([-math.log(p[LABELS.index(t)]) for t, p in zip(TRUE, probs)]))


def test_probabilities_in_predictions_reach_nll_and_ece_of_every_seed_and_the_mean():
    other = [list(np.roll(p, 1)) for p in PROBS]
    agg = aggregate(preds_of(0) + preds_of(1, other), LABELS)
    for seed, probs in ((0, PROBS), (1, other)):
        scalars = agg.per_seed[seed].scalars()
        assert scalars["nll"] == pytest.approx(expected_nll(probs), abs=1e-12)
        cols = np.array([LABELS.index(t) for t in TRUE])
        assert scalars["ece"] == pytest.approx(expected_calibration_error(np.array(probs), cols), abs=1e-12)
    assert agg.mean["ece"] == pytest.approx((agg.per_seed[0].ece + agg.per_seed[1].ece) / 2)
    assert agg.mean["nll"] == pytest.approx((expected_nll(PROBS) + expected_nll(other)) / 2)
    no_probs = [Prediction(p.id, p.label, p.pred, seed=0) for p in preds_of(0)]
    assert "nll" not in metrics_of(no_probs, LABELS).scalars() and "ece" not in metrics_of(no_probs, LABELS).scalars()


def test_nll_is_computed_in_float64_and_clipped_both_ways():
    float32 = np.array(PROBS, dtype=np.float32)
    m = compute_metrics(TRUE, ["a"] * 6, LABELS, float32)
    assert m.nll == pytest.approx(expected_nll(float32.astype(np.float64).tolist()), abs=1e-12)
    zero = [[0.0, 1.0, 0.0]] + [[1.0, 0.0, 0.0]] + [[0.0, 1.0, 0.0]] * 2 + [[0.0, 0.0, 1.0]] * 2
    assert compute_metrics(TRUE, ["b"] * 6, LABELS, zero).nll == pytest.approx(-math.log(1e-12) / 6)
    over = [[1.0000001, 0.0, 0.0]] * 2 + [[0.0, 1.0000001, 0.0]] * 2 + [[0.0, 0.0, 1.0000001]] * 2  # rounding
    assert compute_metrics(TRUE, TRUE, LABELS, over).nll == 0.0


def test_a_single_seed_aggregates_to_itself_with_zero_spread():
    agg = aggregate(preds_of(3), LABELS)
    m = agg.per_seed[3]
    assert agg.seeds == [3] and agg.mean["weighted_f1"] == m.weighted_f1 and agg.std["weighted_f1"] == 0.0
    assert agg.per_class_f1_mean == {label: float(f) for label, f in zip(LABELS, m.f1)}
    assert agg.per_class_recall_mean == {label: float(r) for label, r in zip(LABELS, m.recall)}


def test_serialised_forms_keep_integers_integers_and_six_decimals():
    assert confusion_matrix(["a", "b"], ["b", "b"], LABELS).dtype == np.int64  # counts, not floats
    m = compute_metrics(["a", "a", "a", "b"], ["a", "b", "c", "b"], LABELS)
    assert m.confusion.dtype == np.int64
    d = m.to_dict()
    assert all(type(x) is int for row in d["confusion"] for x in row)
    assert d["confusion_normalised"][0] == [0.333333, 0.333333, 0.333333]
    a = aggregate([Prediction(f"u{i}", t, p, seed=0) for i, (t, p) in
                   enumerate(zip(["a", "a", "a", "b"], ["a", "b", "c", "b"]))], LABELS).to_dict()
    assert all(type(x) is int for row in a["confusion"] for x in row)
    assert a["confusion_normalised"][0] == [0.333333, 0.333333, 0.333333]


def test_predictions_files_are_utf8_whatever_the_locale(tmp_path, cp949_default):
    """Korean Windows' locale encoding is cp949: Korean ids and labels survive the round trip,
    and the file on disk is UTF-8."""
    path = write_predictions(tmp_path / "p.jsonl", [Prediction("발화1", "기쁨", "슬픔", probs=[0.25, 0.75])])
    assert "발화1" in path.read_bytes().decode("utf-8")
    assert [(p.id, p.label, p.pred) for p in read_predictions(path)] == [("발화1", "기쁨", "슬픔")]


def test_predictions_files_round_probabilities_to_six_places_and_keep_korean(tmp_path):
    path = write_predictions(tmp_path / "p.jsonl", [Prediction("발화1", "a", "b", probs=[1 / 3, 2 / 3, 0.0])])
    line = path.read_text(encoding="utf-8").strip()
    assert '"발화1"' in line and '"probs": [0.333333, 0.666667, 0.0]' in line


def test_refusals_are_word_for_word():
    def refused(message, fn, *args):
        with pytest.raises(KoemoError) as e:
            fn(*args)
        assert str(e.value) == message

    refused("2 true labels but 1 predictions", confusion_matrix, ["a", "b"], ["a"], LABELS)
    refused("no seeds to aggregate", aggregate_metrics, {})
    m = compute_metrics(["a"], ["a"], LABELS)
    other = compute_metrics(["a"], ["a"], ["a", "c", "b"])
    refused("seed 1 was evaluated on a different label list", aggregate_metrics, {0: m, 1: other})
    refused("predictions: true label 'z' is not in the label list (a, b, c)", metrics_of,
            [Prediction("u", "z", "a")], LABELS)
    refused("prediction 'z' is not in the label list (a, b, c)", confusion_matrix, ["a"], ["z"], LABELS)
    refused("confusion matrix is (2, 2), expected 3x3 for 3 labels", metrics_from_confusion, np.eye(2), LABELS)
    refused("no predictions to evaluate", metrics_from_confusion, np.zeros((3, 3)), LABELS)
    refused("seed 0: utterance 'u2' was tested more than once", aggregate,
            [Prediction("u1", "a", "a"), Prediction("u2", "a", "a"), Prediction("u2", "a", "b")], LABELS)
