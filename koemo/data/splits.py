"""Train/validation/test splits, deterministic per seed and saved as files beside the manifest.

Protocols:

- ``stratified``: the paper's 8:1:1 split stratified by label (one fold per seed). On EmotionTTS
  it leaks: the same sentences and speakers appear in train and test.
- ``speaker``: k-fold cross-validation with disjoint speakers.
- ``sentence``: k-fold cross-validation with disjoint sentence groups.
- ``speaker-sentence``: a k x k grid; the test cell is (speaker fold i) x (sentence fold j) and
  training uses only the other speakers *and* the other sentences, so neither the voice nor the
  sentence of a test clip was seen in training. Every utterance is tested exactly once per seed.
- ``text-neutral``: one fold that tests the clips whose sentence is read in more than one emotion
  (:func:`text_neutral_ids`: the words cannot give the label away) and trains on the clips of the
  other speakers and sentences. On EmotionTTS: train on the ten emotional-script speakers
  (nea..neo, 200 clips), test on the five plain-script speakers (ema..emh, 100 clips). Seeds
  change only the initialisation (and the validation hold-out).

With ``valid="none"`` no validation set is held out: the whole training side trains and the
trainer keeps the last of a fixed number of epochs (``split.valid``). Otherwise validation (for
choosing the checkpoint) is carved from the training side the same way the test
side is: whole speakers (about 15%) in the speaker protocol, whole sentence groups in the
sentence protocol, and both in the speaker-sentence grid (validation = held-out speakers x
held-out sentences; clips of a held-out speaker reading a kept sentence, or vice versa, are left
out of that fold). A validation set that shares sentences with training is useless on EmotionTTS:
the emotional scripts give the label away and it scores 1.0 from the first epoch.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from koemo.data.manifest import Utterance
from koemo.errors import KoemoError
from koemo.paths import atomic_write_text

PROTOCOLS = ("stratified", "speaker", "sentence", "speaker-sentence", "text-neutral")
VALIDATION = ("holdout", "none")


@dataclass
class Fold:
    name: str
    train: list[str]
    valid: list[str]
    test: list[str]


def _deal(keys: list[str], strata: dict[str, str], k: int, rng: np.random.Generator) -> list[list[str]]:
    """Shuffle keys, then deal them round-robin stratum by stratum so folds stay balanced."""
    keys = sorted(keys)
    order = rng.permutation(len(keys))
    shuffled = [keys[i] for i in order]
    shuffled.sort(key=lambda key: strata.get(key, ""))  # stable: shuffled within a stratum
    folds: list[list[str]] = [[] for _ in range(k)]
    offset = int(rng.integers(k))
    for i, key in enumerate(shuffled):
        folds[(i + offset) % k].append(key)
    return folds


def _sole_label(utts: Sequence[Utterance], attr: str) -> dict[str, str]:
    """The stratum of each speaker / sentence group: its label when all its clips share one,
    else ``~mixed`` (a stratum of its own)."""
    labels: dict[str, set[str]] = defaultdict(set)
    for u in utts:
        labels[getattr(u, attr)].add(u.label)
    return {key: (next(iter(ls)) if len(ls) == 1 else "~mixed") for key, ls in labels.items()}


def _hold_out(
    utts: Sequence[Utterance], attr: str, fraction: float, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """Split utterances into (train, valid) by holding out whole ``attr`` values."""
    keys = sorted({getattr(u, attr) for u in utts})
    if len(keys) < 2:
        raise KoemoError(f"cannot hold out a validation {attr}: only {len(keys)} in training")
    n_valid = max(1, math.ceil(len(keys) * fraction))
    n_valid = min(n_valid, len(keys) - 1)
    valid_keys = set(rng.choice(keys, size=n_valid, replace=False).tolist())
    train = [u.id for u in utts if getattr(u, attr) not in valid_keys]
    valid = [u.id for u in utts if getattr(u, attr) in valid_keys]
    return train, valid


def _hold_out_both(
    utts: Sequence[Utterance], fraction: float, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """(train, valid) disjoint in speakers AND sentence groups, groups held out per label stratum."""
    speakers = sorted({u.speaker for u in utts})
    n_spk = min(max(1, math.ceil(len(speakers) * fraction)), len(speakers) - 1)
    held_spk = set(rng.choice(speakers, size=n_spk, replace=False).tolist()) if n_spk > 0 else set()
    strata = _sole_label(utts, "group")
    held_grp: set[str] = set()
    for stratum in sorted(set(strata.values())):
        keys = sorted(k for k, v in strata.items() if v == stratum)
        if len(keys) < 2:
            continue  # holding out a stratum's only sentence would remove it from training
        n = min(max(1, round(len(keys) * fraction)), len(keys) - 1)
        held_grp |= set(rng.choice(keys, size=n, replace=False).tolist())
    valid = [u.id for u in utts if u.speaker in held_spk and u.group in held_grp]
    train = [u.id for u in utts if u.speaker not in held_spk and u.group not in held_grp]
    if not valid or not train:
        raise KoemoError("too few speakers or sentences to hold out a disjoint validation set")
    return train, valid


def _check_groups(utts: Sequence[Utterance], attr: str, k: int) -> None:
    n = len({getattr(u, attr) for u in utts})
    if any(not getattr(u, attr) for u in utts):
        raise KoemoError(f"some utterances have no {attr}; a {attr}-disjoint split needs it")
    if n < k + 1:
        raise KoemoError(f"{k}-fold {attr} split needs at least {k + 1} {attr}s, the data has {n}")


def make_folds(
    utts: Sequence[Utterance],
    protocol: str = "speaker-sentence",
    folds: int = 3,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    valid_fraction: float = 0.15,
    valid: str = "holdout",
) -> list[Fold]:
    """The folds of ``protocol`` for ``seed``; ids are sorted, so the result never depends on order.
    ``valid="none"``: no validation set, every training-side clip trains."""
    if valid not in VALIDATION:
        raise KoemoError(f"split.valid={valid!r}: use one of {', '.join(VALIDATION)}")
    folds_out = _make_folds(utts, protocol, folds, seed, ratios, valid_fraction, valid == "none")
    if valid == "none":
        return [Fold(f.name, sorted(f.train + f.valid), [], f.test) for f in folds_out]
    return folds_out


def folds_of(split, utts: Sequence[Utterance], *, seed: int | None = None, protocol: str | None = None) -> list[Fold]:
    """The folds a recipe's ``split`` section describes (``seed``/``protocol`` override it)."""
    return make_folds(utts, protocol or split.protocol, split.folds, split.seed if seed is None else seed,
                      tuple(split.ratios), valid=split.valid)


def text_neutral_ids(utts: Sequence[Utterance]) -> set[str]:
    """Clips whose sentence group is read in more than one emotion: their words carry no label."""
    labels: dict[str, set[str]] = defaultdict(set)
    for u in utts:
        if u.group:
            labels[u.group].add(u.label)
    return {u.id for u in utts if u.group and len(labels[u.group]) > 1}


def _make_folds(utts, protocol, folds, seed, ratios, valid_fraction, no_valid: bool) -> list[Fold]:
    if protocol not in PROTOCOLS:
        raise KoemoError(f"unknown split protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    if not utts:
        raise KoemoError("cannot split an empty manifest")
    utts = sorted(utts, key=lambda u: u.id)
    rng = np.random.default_rng(seed)

    if protocol == "stratified":
        from sklearn.model_selection import train_test_split

        ids = [u.id for u in utts]
        labels = [u.label for u in utts]
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise KoemoError(f"split ratios must sum to 1, got {ratios}")
        rest_share = ratios[1] + ratios[2]
        train, rest, _, rest_labels = train_test_split(
            ids, labels, test_size=rest_share, stratify=labels, random_state=seed
        )
        valid, test = train_test_split(
            rest, test_size=ratios[2] / rest_share, stratify=rest_labels, random_state=seed
        )
        return [Fold("stratified", sorted(train), sorted(valid), sorted(test))]

    if protocol in ("speaker", "sentence"):
        attr = "speaker" if protocol == "speaker" else "group"
        _check_groups(utts, attr, folds)
        strata = _sole_label(utts, attr)
        dealt = _deal(sorted(strata), strata, folds, rng)
        out = []
        for i, held in enumerate(dealt):
            held_set = set(held)
            test = [u.id for u in utts if getattr(u, attr) in held_set]
            rest = [u for u in utts if getattr(u, attr) not in held_set]
            train, valid = ([u.id for u in rest], []) if no_valid else _hold_out(rest, attr, valid_fraction, rng)
            out.append(Fold(f"{protocol}{i}", train, valid, test))
        return out

    if protocol == "text-neutral":
        test_ids = text_neutral_ids(utts)
        if not test_ids:
            raise KoemoError("text-neutral protocol: no sentence is read in more than one emotion in this data")
        test_speakers = {u.speaker for u in utts if u.id in test_ids}
        test_groups = {u.group for u in utts if u.id in test_ids}
        rest = [u for u in utts if u.speaker not in test_speakers and u.group not in test_groups]
        if not rest:
            raise KoemoError("text-neutral protocol: every speaker reads a text-neutral sentence, so no "
                             "speaker is left to train on; use the speaker protocol")
        train, valid_ids = ([u.id for u in rest], []) if no_valid else _hold_out_both(rest, valid_fraction, rng)
        return [Fold("text-neutral", train, valid_ids, sorted(test_ids))]

    # speaker-sentence grid
    _check_groups(utts, "speaker", folds)
    _check_groups(utts, "group", folds)
    spk_strata = {s: "" for s in {u.speaker for u in utts}}
    grp_strata = _sole_label(utts, "group")
    spk_folds = _deal(sorted(spk_strata), spk_strata, folds, rng)
    grp_folds = _deal(sorted(grp_strata), grp_strata, folds, rng)
    out = []
    for i, speakers in enumerate(spk_folds):
        for j, groups in enumerate(grp_folds):
            s_set, g_set = set(speakers), set(groups)
            test = [u.id for u in utts if u.speaker in s_set and u.group in g_set]
            rest = [u for u in utts if u.speaker not in s_set and u.group not in g_set]
            if not test or not rest:
                continue
            train, valid = ([u.id for u in rest], []) if no_valid else _hold_out_both(rest, valid_fraction, rng)
            out.append(Fold(f"spk{i}-sent{j}", train, valid, test))
    return out


def split_path(manifest: str | Path, protocol: str, folds: int, seed: int, valid: str = "holdout") -> Path:
    manifest = Path(manifest)
    k = "" if protocol in ("stratified", "text-neutral") else f"-k{folds}"
    v = "" if valid == "holdout" else f"-valid-{valid}"
    return manifest.parent / "splits" / f"{manifest.stem}.{protocol}{k}{v}.seed{seed}.json"


def save_folds(path: str | Path, fold_list: list[Fold], meta: dict) -> Path:
    doc = {**meta, "folds": [asdict(f) for f in fold_list]}
    atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=1))
    return Path(path)


def load_folds(path: str | Path) -> list[Fold]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Fold(**f) for f in doc["folds"]]


def leakage(utts: Sequence[Utterance], fold: Fold) -> dict[str, int]:
    """How many test utterances share a speaker / a sentence group with the training side."""
    by_id = {u.id: u for u in utts}
    train = [by_id[i] for i in fold.train]
    spk = {u.speaker for u in train}
    grp = {u.group for u in train}
    test = [by_id[i] for i in fold.test]
    return {
        "test": len(test),
        "test_speaker_seen": sum(u.speaker in spk for u in test),
        "test_sentence_seen": sum(u.group in grp for u in test),
    }
