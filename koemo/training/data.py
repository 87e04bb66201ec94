"""Training inputs as plain mappings, checked once and padded into batches.

The trainer never reads the feature store itself: it gets

- ``audio``: ``{utt_id: array [T, D]}`` (frozen speech-encoder frames, or raw encoder inputs such
  as log-mel frames ``[frames, mels]`` when the encoders are fine-tuned end to end);
- ``text``: ``{source: {utt_id: array [T, D]}}`` with ``source`` ``gold`` or ``asr:<backend>``
  (token vectors, a ``[1, D]`` sentence vector, or token ids for end-to-end training);
- ``labels``: ``{utt_id: canonical label}``.

A model that reads one modality gets an :class:`AbsentModality` table for the other.

:func:`koemo.training.features.load_features` fills them from the feature store.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from koemo.errors import BadInputError, KoemoError, UnknownLabelError
from koemo.sources import ASR_PREFIX, TextSource


class AbsentModality(Mapping):
    """The table of a modality a model does not read (text-only, audio-only): one zero frame for
    every utterance, so batches keep their two-modality shape. It hashes like the ``[1, 1]``
    float16 zero frame older koemo stored, so grid fingerprints did not change."""

    FRAME = np.zeros((1, 1), dtype=np.float16)

    def __getitem__(self, uid: str) -> np.ndarray:
        return self.FRAME

    def __contains__(self, uid: object) -> bool:
        return True

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return True


class FeatureData:
    """Audio/text arrays and labels; :meth:`check` validates, :meth:`batch` pads."""

    def __init__(self, audio: Mapping[str, np.ndarray], text: Mapping[str, Mapping[str, np.ndarray]],
                 labels: Mapping[str, str], label_list: Sequence[str],
                 audio_variants: Sequence[Mapping[str, np.ndarray]] = ()):
        self.audio = audio
        #: augmented copies of the speech input, read by training batches only (koemo.training.augment)
        self.audio_variants = list(audio_variants)
        self.text = dict(text)
        self.labels = labels
        self.label_list = list(label_list)
        self.label_index = {label: i for i, label in enumerate(self.label_list)}
        self._checked: set[tuple[str, str]] = set()
        self._digests: dict[tuple[str, str], bytes] = {}  # (table, utt) -> sha256 of its array
        self._resident: dict[tuple[int, int], tuple[Mapping, Resident | None]] = {}  # (id(table), means) -> padded copy

    # ------------------------------------------------------------------ checks
    def check(self, ids: Sequence[str], sources: Iterable[str], split: str) -> None:
        """Refuse an empty split, unknown labels, missing features or text, NaN/inf values."""
        if not ids:
            raise KoemoError(f"the {split} split is empty; use more data or another split protocol")
        for uid in ids:
            label = self.labels.get(uid)
            if label is None:
                raise BadInputError(uid, f"utterance in the {split} split has no label")
            if label not in self.label_index:
                raise UnknownLabelError(
                    uid, f"label {label!r} is not in the recipe's label set ({', '.join(self.label_list)})"
                )
            self._check_array(uid, "audio", self.audio, "speech features")
            for source in sources:
                if source not in self.text:
                    raise KoemoError(f"no '{source}' text features were given to the trainer")
                what = f"'{source}' text features"
                if source.startswith(ASR_PREFIX) and uid not in self.text[source]:
                    raise BadInputError(
                        uid, f"no '{source}' transcript/features, needed for training on it; "
                             f"make it with: {TextSource.parse(source).transcribe_command()}"
                    )
                self._check_array(uid, source, self.text[source], what)

    def _check_array(self, uid: str, key: str, table: Mapping[str, np.ndarray], what: str) -> None:
        if (uid, key) in self._checked:
            return
        if uid not in table:
            raise BadInputError(uid, f"no {what} for this utterance (run: koemo features extract)")
        if isinstance(table[uid], str):  # raw text for end-to-end training
            self._checked.add((uid, key))
            return
        arr = np.asarray(table[uid])
        if arr.ndim not in (1, 2, 3):  # [time, (layers,) dim] features, or a waveform / token ids [time]
            raise BadInputError(uid, f"{what} have shape {arr.shape}; expected [time, dim] or [time, layers, dim]")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "infinite values"
            raise BadInputError(uid, f"{what} contain {bad}; re-extract them (koemo features)")
        self._checked.add((uid, key))

    # ------------------------------------------------------------------ batches
    def y(self, ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.label_index[self.labels[u]] for u in ids], dtype=torch.long)

    def batch(self, pairs: Sequence[tuple[str, str]], copies: Sequence[int] | None = None,
              text_means: bool = False, speech_means: int = 0) -> dict[str, torch.Tensor]:
        """Pad ``[(utt_id, text source), ...]`` into audio/text tensors and boolean masks;
        ``copies[i]`` > 0 reads pair i's speech from augmented copy ``copies[i]``;
        ``text_means``: each text as the mean of its vectors (``[B, 1, D]``, a zero vector for
        none), for a head that reads nothing else (``FusionModel.text_mean_only``);
        ``speech_means`` > 0: each clip's speech as the mean of its windows of that many frames
        (``FusionModel.speech_mean_only``, :func:`koemo.fusion.base.speech_mean_window`)."""
        audio, audio_mask = self.speech_batch([u for u, _ in pairs], copies, speech_means)
        return {"audio": audio, "audio_mask": audio_mask, **self.text_batch(pairs, text_means)}

    def speech_batch(self, ids: Sequence[str], copies: Sequence[int] | None = None,
                     means: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`batch`'s speech half: ``ids``' speech padded, with its mask (``means``: see
        :meth:`batch`'s ``speech_means``)."""
        tables = [self.audio] + self.audio_variants
        return self._pad([(tables[copies[i] if copies else 0], u) for i, u in enumerate(ids)], means)

    def text_batch(self, pairs: Sequence[tuple[str, str]], text_means: bool = False) -> dict:
        """:meth:`batch`'s text half: ``{"text": ..., "text_mask": ...}`` (raw strings, mask
        ``None``, for a fine-tuned text encoder)."""
        if pairs and isinstance(self.text[pairs[0][1]][pairs[0][0]], str):
            return {"text": [self.text[s][u] for u, s in pairs], "text_mask": None}
        text, text_mask = self._pad([(self.text[s], u) for u, s in pairs], means=int(text_means))
        return {"text": text, "text_mask": text_mask}

    def _pad(self, items: Sequence[tuple[Mapping, str]], means: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`pad` of ``table[uid]`` (``means`` > 0: of its :func:`mean_vector` over windows of
        that many frames) for each item, indexed
        from each table's resident padded copy when it has one (the same values: zero padding,
        cut to the batch's longest)."""
        rows: dict[int, list[int]] = {}  # id(table) -> positions of its items
        for i, (table, _) in enumerate(items):
            rows.setdefault(id(table), []).append(i)
        residents = {key: self._resident_of(items[pos[0]][0], means) for key, pos in rows.items()}
        if not items or any(r is None for r in residents.values()):
            return pad([mean_vector(table[u], means) if means else table[u] for table, u in items])
        if len(rows) == 1:
            return next(iter(residents.values())).batch([u for _, u in items])
        # clean and augmented speech mixed in one batch: each table's rows from its own padded copy
        parts = {key: residents[key].batch([items[i][1] for i in pos]) for key, pos in rows.items()}
        t = max(x.shape[1] for x, _ in parts.values())
        first = next(iter(parts.values()))[0]
        out = first.new_zeros((len(items), t) + tuple(first.shape[2:]))
        mask = torch.zeros((len(items), t), dtype=torch.bool)
        for key, pos in rows.items():
            x, m = parts[key]
            out[pos, : x.shape[1]] = x
            mask[pos, : m.shape[1]] = m
        return out, mask

    def _resident_of(self, table: Mapping, means: int = 0) -> "Resident | None":
        key = (id(table), means)
        entry = self._resident.get(key)
        if entry is None or entry[0] is not table or (entry[1] is not None and len(entry[1].row) != len(table)):
            entry = (table, Resident.of(table, means))
            self._resident[key] = entry
        return entry[1]

    def dims(self, source: str) -> tuple[int, int]:
        def dim(table: Mapping[str, np.ndarray]) -> int:
            if isinstance(table, AbsentModality):
                return 1
            return int(np.asarray(next(iter(table.values()))).shape[-1])

        return dim(self.audio), dim(self.text[source])

    def audio_layers(self) -> int:
        """L for speech inputs with a layer axis ``[T, L, D]``, else 1."""
        if isinstance(self.audio, AbsentModality):
            return 1
        first = np.asarray(next(iter(self.audio.values())))
        return int(first.shape[1]) if first.ndim == 3 else 1

    def data_hash(self, parts: Iterable[tuple[Sequence[str], Iterable[str]]]) -> str:
        """sha256 of the labels and every array a run reads: ``parts`` are (ids, text sources).

        Each array is hashed once per FeatureData (a grid hashes the same clips for every fold)."""
        h = hashlib.sha256()
        for ids, sources in parts:
            sources = sorted(set(sources))
            h.update(f"part {len(ids)} {sources}\n".encode())
            for uid in sorted(ids):
                h.update(f"{uid}\t{self.labels.get(uid)}\n".encode())
                for key, table in [("audio", self.audio)] + [(s, self.text[s]) for s in sources]:
                    if isinstance(table[uid], str):
                        h.update(f"{key}:{table[uid]}\n".encode())
                        continue
                    digest = self._digests.get((key, uid))
                    if digest is None:
                        arr = np.ascontiguousarray(np.asarray(table[uid]))
                        digest = hashlib.sha256(f"{arr.shape}{arr.dtype}".encode() + arr.tobytes()).digest()
                        self._digests[(key, uid)] = digest
                    h.update(key.encode() + digest)
        return h.hexdigest()


class Resident:
    """A table's arrays padded once into ``[N, T_max, ...]`` so that a training step indexes a
    tensor instead of copying every clip again (each batch is cut to its own longest clip, so
    values and masks equal :func:`pad`'s). Only for tables of arrays within ``BUDGET`` bytes."""

    BUDGET = 512 * 2**20

    def __init__(self, keys: Sequence[str], arrays: Sequence[np.ndarray]):
        self.tensor, self.mask = pad(arrays)
        self.lengths = self.mask.sum(dim=1)
        self.row = {k: i for i, k in enumerate(keys)}

    @classmethod
    def of(cls, table: Mapping, means: int = 0) -> "Resident | None":
        """The padded copy of ``table`` (``means`` > 0: of each entry's :func:`mean_vector`)."""
        if isinstance(table, AbsentModality) or not isinstance(table, Mapping) or not len(table):
            return None
        keys = list(table)
        arrays = [table[k] for k in keys]
        if not all(isinstance(a, np.ndarray) for a in arrays) or len({a.shape[1:] for a in arrays}) != 1:
            return None  # raw text, lazy or ragged entries: padded per batch
        if means:
            arrays = [mean_vector(a, means) for a in arrays]
        t_max = max(max(a.shape[0] for a in arrays), 1)
        if len(arrays) * t_max * int(np.prod(arrays[0].shape[1:], dtype=np.int64)) * 8 > cls.BUDGET:
            return None
        return cls(keys, arrays)

    def batch(self, uids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor([self.row[u] for u in uids], dtype=torch.long)
        t = max(int(self.lengths[idx].max()), 1)
        return self.tensor[idx, :t], self.mask[idx, :t]


def mean_vector(a: np.ndarray, window: int = 1) -> np.ndarray:
    """``[T, ...]`` -> its mean ``[1, ...]`` (float32); no vectors -> one zero vector, what padding
    an empty entry and fixing its mask gives (:func:`koemo.fusion.base.fix_empty`). ``window`` >
    1: the mean of the means of consecutive windows of that many frames (the last one shorter),
    what :func:`koemo.fusion.base.pool_frames` and a masked mean make of the frames."""
    a = np.asarray(a, dtype=np.float32)
    if not a.shape[0]:
        return np.zeros((1,) + a.shape[1:], np.float32)
    if window > 1 and a.shape[0] > window:
        starts = np.arange(0, a.shape[0], window)
        counts = np.minimum(window, a.shape[0] - starts).reshape((-1,) + (1,) * (a.ndim - 1))
        return (np.add.reduceat(a, starts, axis=0) / counts).mean(axis=0, keepdims=True)
    return a.mean(axis=0, keepdims=True)


def pad(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, ...]`` arrays into ``[B, T_max, ...]`` with a ``[B, T_max]`` boolean mask.

    Floats become float32, integers (token ids) int64; padding is zero.
    """
    arrs = [np.asarray(a) for a in arrays]
    lengths = [a.shape[0] for a in arrs]
    t_max = max(max(lengths), 1)
    first = arrs[0]
    dtype = np.int64 if first.dtype.kind in "iu" else np.float32
    out = np.zeros((len(arrs), t_max) + first.shape[1:], dtype=dtype)
    for i, a in enumerate(arrs):
        out[i, : a.shape[0]] = a
    mask = np.arange(t_max)[None, :] < np.asarray(lengths)[:, None]
    return torch.from_numpy(out), torch.from_numpy(mask)
