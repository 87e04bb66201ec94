"""Metrics checked against confusion matrices worked out by hand (no sklearn in the expectations)."""

from __future__ import annotations

import json
import re
import math

import numpy as np
import pytest

from koemo.errors import BadInputError, KoemoError
from koemo.metrics import (
    Prediction,
    aggregate,
    compute_metrics,
    confusion_matrix,
    mean_std,
    metrics_from_confusion,
    read_predictions,
    row_normalise,
    write_predictions,
)

LABELS = ["a", "b", "c"]


def expand(cm, labels=LABELS):
    """Label lists that produce confusion matrix ``cm``."""
    y_true, y_pred = [], []
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            y_true += [labels[i]] * n
            y_pred += [labels[j]] * n
    return y_true, y_pred


# true a: 3 right, 1 as b; true b: 1 as a, 2 right, 1 as c; true c: 2 right.   N = 10
CM = [[3, 1, 0], [1, 2, 1], [0, 0, 2]]


def test_hand_computed_three_class():
    y_true, y_pred = expand(CM)
    m = compute_metrics(y_true, y_pred, LABELS)
    assert m.confusion.tolist() == CM
    # support 4, 4, 2; predicted 4, 3, 3; TP 3, 2, 2
    assert m.support.tolist() == [4, 4, 2]
    assert m.precision == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert m.recall == pytest.approx([3 / 4, 2 / 4, 2 / 2])
    f1_b = 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)  # = 4/7
    f1_c = 2 * (2 / 3) * 1 / (2 / 3 + 1)  # = 0.8
    assert m.f1 == pytest.approx([0.75, 4 / 7, 0.8])
    assert f1_b == pytest.approx(4 / 7) and f1_c == pytest.approx(0.8)
    # weighted F1 = 0.4 * 0.75 + 0.4 * 4/7 + 0.2 * 0.8
    assert m.weighted_f1 == pytest.approx(0.3 + 1.6 / 7 + 0.16)
    assert m.weighted_f1 == pytest.approx(0.688571, abs=1e-6)
    # weighted accuracy = 0.4 * 3/4 + 0.4 * 2/4 + 0.2 * 1 = 0.7 = plain accuracy 7/10
    assert m.weighted_accuracy == pytest.approx(0.7)
    assert m.accuracy == pytest.approx(0.7)
    # UA = mean recall = (0.75 + 0.5 + 1) / 3
    assert m.unweighted_accuracy == pytest.approx(0.75)
    assert m.macro_f1 == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)
    # one-vs-rest accuracy: a (3 + 5) / 10, b (2 + 5) / 10, c (2 + 7) / 10
    assert m.ovr_accuracy == pytest.approx([0.8, 0.7, 0.9])
    assert m.n == 10


def test_row_normalised_confusion():
    norm = row_normalise(np.array(CM))
    assert norm.tolist()[0] == pytest.approx([0.75, 0.25, 0.0])
    assert norm.tolist()[1] == pytest.approx([0.25, 0.5, 0.25])
    assert norm.tolist()[2] == pytest.approx([0.0, 0.0, 1.0])
    assert row_normalise(np.zeros((2, 2))).tolist() == [[0, 0], [0, 0]]


def test_imbalanced_weighting_differs_from_macro():
    # 8 of class a all right; 2 of class b both predicted a.
    cm = [[8, 0], [2, 0]]
    m = metrics_from_confusion(np.array(cm), ["a", "b"])
    # a: precision 8/10, recall 1, F1 = 2*0.8/1.8 = 8/9; b: precision 0 (nothing predicted), F1 0
    assert m.f1 == pytest.approx([8 / 9, 0.0])
    assert m.precision.tolist() == pytest.approx([0.8, 0.0])
    assert m.weighted_f1 == pytest.approx(0.8 * 8 / 9)
    assert m.macro_f1 == pytest.approx(4 / 9)
    assert m.accuracy == pytest.approx(0.8) and m.weighted_accuracy == pytest.approx(0.8)
    assert m.unweighted_accuracy == pytest.approx(0.5)


def test_class_absent_from_test_set_is_left_out_of_macro_averages():
    # class c never occurs in the truth but is predicted once (an error against b)
    cm = [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
    m = metrics_from_confusion(np.array(cm), LABELS)
    assert m.unweighted_accuracy == pytest.approx((1 + 0.5) / 2)
    # F1 a = 1; b: p 1, r 0.5 -> 2/3; c is not averaged
    assert m.macro_f1 == pytest.approx((1 + 2 / 3) / 2)
    assert m.weighted_f1 == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m.f1[2] == 0.0 and m.support[2] == 0


def test_probabilities_give_nll():
    m = compute_metrics(["a", "b"], ["a", "a"], ["a", "b"], probs=[[0.8, 0.2], [0.6, 0.4]])
    assert m.nll == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)
    assert m.scalars()["nll"] == pytest.approx(m.nll)
    with pytest.raises(KoemoError, match="expected"):
        compute_metrics(["a"], ["a"], ["a", "b"], probs=[[1.0]])


def test_unknown_label_is_an_error():
    with pytest.raises(KoemoError, match="'x' is not in the label list"):
        confusion_matrix(["a", "x"], ["a", "a"], LABELS)
    with pytest.raises(KoemoError, match="no predictions"):
        metrics_from_confusion(np.zeros((3, 3)), LABELS)


def test_to_dict_is_json_ready():
    y_true, y_pred = expand(CM)
    d = compute_metrics(y_true, y_pred, LABELS).to_dict()
    text = json.dumps(d)
    assert d["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert d["confusion"] == CM
    assert "weighted_f1" in text


def test_mean_std_is_sample_std():
    mean, std = mean_std([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(math.sqrt(((0.1) ** 2 + (0.1) ** 2) / 1))
    assert mean_std([0.4]) == (0.4, 0.0)


def test_aggregate_pools_folds_within_a_seed_then_averages_seeds():
    preds = []
    # seed 0: fold f0 holds row a of CM, fold f1 holds rows b and c -> pooled = CM (acc 0.7)
    y_true, y_pred = expand(CM)
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        preds.append(Prediction(id=f"u{i}", label=t, pred=p, seed=0, fold="f0" if t == "a" else "f1"))
    # seed 1: everything right (acc 1.0)
    for i, t in enumerate(y_true):
        preds.append(Prediction(id=f"u{i}", label=t, pred=t, seed=1))
    agg = aggregate(preds, LABELS)
    assert agg.seeds == [0, 1]
    assert agg.per_seed[0].accuracy == pytest.approx(0.7)
    assert agg.mean["accuracy"] == pytest.approx(0.85)
    assert agg.std["accuracy"] == pytest.approx(math.sqrt(2 * 0.15**2))
    assert agg.mean["weighted_f1"] == pytest.approx((0.688571428 + 1.0) / 2)
    # summed confusion: CM + diag(4, 4, 2)
    assert agg.confusion.tolist() == [[7, 1, 0], [1, 6, 1], [0, 0, 4]]
    assert agg.per_class_recall_mean["b"] == pytest.approx((0.5 + 1) / 2)
    assert json.dumps(agg.to_dict())


def test_aggregate_rejects_an_utterance_tested_twice_in_one_seed():
    preds = [Prediction("u1", "a", "a", seed=0), Prediction("u1", "a", "b", seed=0)]
    with pytest.raises(KoemoError, match="'u1' was tested more than once"):
        aggregate(preds, LABELS)


def test_predictions_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "preds.jsonl"
    rows = [Prediction("u1", "a", "b", probs=[0.3, 0.7, 0.0], seed=2, fold="f0", extra={"text": "안녕"})]
    write_predictions(path, rows)
    back = read_predictions(path)
    assert back[0].id == "u1" and back[0].probs == pytest.approx([0.3, 0.7, 0.0])
    assert back[0].seed == 2 and back[0].fold == "f0" and back[0].extra == {"text": "안녕"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "u1", "label": "a", "pred": "a"}\n{"id": "u2", "label": "a"}\n')
    with pytest.raises(BadInputError, match=r"bad.jsonl:2: missing field 'pred'"):
        read_predictions(bad)
    bad.write_text("not json\n")
    with pytest.raises(BadInputError, match=r"bad.jsonl:1: not valid JSON"):
        read_predictions(bad)
    with pytest.raises(BadInputError, match="not found"):
        read_predictions(tmp_path / "missing.jsonl")


def test_agrees_with_sklearn_on_random_predictions():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true = list(rng.choice(LABELS, size=200, p=[0.5, 0.3, 0.2]))
    y_pred = list(rng.choice(LABELS, size=200))
    m = compute_metrics(y_true, y_pred, LABELS)
    assert m.weighted_f1 == pytest.approx(f1_score(y_true, y_pred, labels=LABELS, average="weighted"))
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, labels=LABELS, average="macro"))
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert m.unweighted_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_to_dict_holds_every_number_as_computed():
    """What results.json and the bundles store: each field equals the metric it names."""
    y_true, y_pred = expand(CM)
    m = compute_metrics(y_true, y_pred, LABELS, probs=[[0.6, 0.3, 0.1]] * len(y_true))
    d = json.loads(json.dumps(m.to_dict()))
    assert d["n"] == m.n == sum(map(sum, CM)) and d["labels"] == LABELS
    for key, value in m.scalars().items():
        assert d[key] == pytest.approx(value)
    for i, label in enumerate(LABELS):
        row = d["per_class"][label]
        assert row == {"precision": pytest.approx(m.precision[i]), "recall": pytest.approx(m.recall[i]),
                       "f1": pytest.approx(m.f1[i]), "support": int(m.support[i]),
                       "ovr_accuracy": pytest.approx(m.ovr_accuracy[i])}
    assert d["confusion"] == CM
    assert d["confusion_normalised"] == [[pytest.approx(x / sum(r), abs=1e-6) for x in r] for r in CM]


def test_aggregate_to_dict_holds_every_number_as_computed():
    y_true, y_pred = expand(CM)
    preds = [Prediction(f"u{i}", t, p, seed=0) for i, (t, p) in enumerate(zip(y_true, y_pred))]
    preds += [Prediction(f"u{i}", t, t, seed=3) for i, t in enumerate(y_true)]
    agg = aggregate(preds, LABELS)
    d = json.loads(json.dumps(agg.to_dict()))
    assert d["labels"] == LABELS and d["seeds"] == [0, 3]
    assert d["mean"] == pytest.approx(agg.mean) and d["std"] == pytest.approx(agg.std)
    assert set(d["per_seed"]) == {"0", "3"}
    assert d["per_seed"]["3"]["accuracy"] == 1.0 and d["per_seed"]["0"] == pytest.approx(agg.per_seed[0].scalars())
    summed = (np.array(CM) + np.diag(np.array(CM).sum(1))).tolist()
    assert d["confusion"] == summed
    assert d["confusion_normalised"] == [[pytest.approx(x / sum(r), abs=1e-6) for x in r] for r in summed]
    assert d["per_class_f1_mean"] == pytest.approx(agg.per_class_f1_mean)
    assert d["per_class_recall_mean"] == pytest.approx(agg.per_class_recall_mean)
    assert d["per_class_recall_mean"]["b"] == pytest.approx((0.5 + 1) / 2)


def test_a_predictions_file_is_read_whole_and_each_bad_line_is_named(tmp_path):
    """Blank lines are skipped (not the end of the file); defaults for seed and fold; every
    refusal names the file (and line) and says what is wrong."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 7, "label": "a", "pred": "b"}\n\n{"id": "u2", "label": "c", "pred": "c", "seed": 3}\n',
                    encoding="utf-8")
    got = read_predictions(path)
    assert [(p.id, p.label, p.pred, p.seed, p.fold, p.probs) for p in got] == [
        ("7", "a", "b", 0, "", None), ("u2", "c", "c", 3, "", None)]
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(BadInputError, match=r"missing.jsonl: predictions file not found"):
        read_predictions(missing)
    cases = {
        "[1, 2]": "p.jsonl:1: expected a JSON object",
        '{"id": "u", "label": "a", "pred": "a", "probs": "0.5"}': "p.jsonl:1: 'probs' must be a list of numbers",
        '{"id": "u", "label": "a", "pred": "a", "probs": [0.5, "x"]}': "p.jsonl:1: 'probs' must be a list of numbers",
        "\n\n": "p.jsonl: no predictions in file",
    }
    for text, message in cases.items():
        path.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(BadInputError, match=re.escape(message)):
            read_predictions(path)


def test_row_normalise_keeps_fractions_of_integer_counts():
    assert row_normalise(np.array([[1, 3], [0, 0]])).tolist() == [[0.25, 0.75], [0.0, 0.0]]


def test_mean_std_of_nothing_is_undefined_and_of_integers_is_a_float():
    mean, std = mean_std([])
    assert math.isnan(mean) and math.isnan(std)
    assert mean_std([1, 2]) == (1.5, pytest.approx(math.sqrt(0.5)))
