"""Synthetic features for trainer tests: 4 emotions, a class signal in audio and (cleaner) gold
text, a noisier ASR text; variable lengths; tiny dims."""

from __future__ import annotations

import numpy as np

from koemo.config import Recipe
from koemo.data.splits import Fold
from koemo.training.data import FeatureData

LABELS = ["neutral", "happy", "sad", "angry"]
DA, DT = 6, 5


def make_data(n: int = 48, seed: int = 0, sentence_vectors: bool = False):
    rng = np.random.default_rng(seed)
    audio, gold, asr, labels = {}, {}, {}, {}
    centers_a = rng.normal(size=(4, DA)) * 1.5
    centers_t = rng.normal(size=(4, DT)) * 1.5
    for i in range(n):
        uid = f"u{i:03d}"
        c = i % 4
        labels[uid] = LABELS[c]
        ta = int(rng.integers(3, 9))
        tt = 1 if sentence_vectors else int(rng.integers(2, 6))
        audio[uid] = (centers_a[c] + rng.normal(size=(ta, DA))).astype(np.float16)
        gold[uid] = (centers_t[c] + 0.5 * rng.normal(size=(tt, DT))).astype(np.float16)
        asr[uid] = (0.5 * centers_t[c] + 1.5 * rng.normal(size=(tt, DT))).astype(np.float16)
    return audio, {"gold": gold, "asr:fake": asr}, labels


def make_fold(labels: dict, n_valid: int = 8, n_test: int = 8) -> Fold:
    ids = sorted(labels)
    return Fold("f0", ids[n_valid + n_test:], ids[:n_valid], ids[n_valid:n_valid + n_test])


def make_recipe(**train) -> Recipe:
    r = Recipe()
    r.model.fusion = train.pop("fusion", "shallow")
    r.model.hidden, r.model.heads, r.model.dropout = 8, 2, train.pop("dropout", 0.0)
    r.train.lr, r.train.epochs, r.train.batch_size = 1e-2, 3, 8
    for k, v in train.items():
        setattr(r.train, k, v)
    return r


def feature_data(**kw) -> tuple[FeatureData, Fold]:
    audio, text, labels = make_data(**kw)
    return FeatureData(audio, text, labels, LABELS), make_fold(labels)
