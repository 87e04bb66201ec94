"""The two encoder interfaces, their registries, and the bad-input rules every encoder shares.

Speech encoders map 16 kHz float32 audio to frames ``[T, dim]`` (``[T, L, dim]``, every layer
stacked, for ``layer="all"`` where an encoder supports it); text encoders map a list of strings
to one ``[T_i, dim]`` array each (``[1, dim]`` for sentence-vector encoders).

Rules shared by all encoders (documented in docs/encoders.md):

- empty or whitespace-only text -> one zero vector ``[1, dim]`` (never NaN, never an error);
- text longer than the encoder's limit -> truncated to the limit; ``encoder.truncated`` counts
  them and one warning per batch says how many;
- audio shorter than one frame -> at least one frame (the audio is zero-padded to one window);
- a non-finite output raises :class:`BadInputError` naming the input.

Each encoder has an ``id`` string that contains every setting that changes its output (backend,
layer, dtype, weights checksum); the feature store keys its cache by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from koemo.errors import BadInputError
from koemo.registry import Registry

log = logging.getLogger("koemo")

SAMPLE_RATE = 16_000
#: ``layer="all"``: every hidden layer of one pass, stacked on a layer axis ``[T, L, dim]``
ALL_LAYERS = "all"
#: ``encoders.speech_window`` of a recipe that does not set it (Whisper's 30 s window)
DEFAULT_WINDOW = "30s"


def speech_settings(section, name: str | None = None) -> dict:
    """The keywords a recipe's ``encoders`` section (or a bundle's recorded one, a dict) gives
    its speech encoder: ``layer`` (``speech_layer``) and, where set, ``window``
    (``speech_window``). One owner, so training, the store and service build the same encoder.
    Another encoder ``name`` than the section's speech encoder gets its defaults (last layer)."""
    def get(key: str, default=None):
        return section.get(key, default) if isinstance(section, dict) else getattr(section, key, default)

    if name is not None and name != get("speech", "whisper-base-encoder"):
        return {"layer": None}
    settings = {"layer": get("speech_layer")}
    window = get("speech_window", DEFAULT_WINDOW)
    if window != DEFAULT_WINDOW:  # encoders without windows never see the keyword
        settings["window"] = window
    return settings


class SpeechEncoder:
    """Audio (16 kHz mono float32) -> frames ``[T, dim]`` float32 (``[T, stacked, dim]`` when
    ``stacked``: that many layers from one pass)."""

    name: ClassVar[str] = ""
    dim: int = 0
    stacked: int = 0  # 0: one layer, [T, dim]; L > 0: L layers, [T, L, dim]
    frame_rate: float | None = None  # frames per second
    finetunable: bool = False
    #: the fewest samples that give one frame; shorter audio is zero-padded to this
    min_samples: int = 1

    @property
    def id(self) -> str:
        raise NotImplementedError

    def _encode(self, audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, audio: np.ndarray, where: str = "<audio>") -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(audio)):
            raise BadInputError(where, "audio contains NaN or infinite samples")
        if audio.size < self.min_samples:
            audio = np.pad(audio, (0, self.min_samples - audio.size))
        out = np.asarray(self._encode(audio), dtype=np.float32)
        frame = (self.stacked, self.dim) if self.stacked else (self.dim,)
        if out.shape[1:] != frame:
            want = f"[T, {self.stacked}, {self.dim}]" if self.stacked else f"[T, {self.dim}]"
            raise BadInputError(where, f"{self.name} returned shape {out.shape}, expected {want}")
        if out.shape[0] == 0:
            out = np.zeros((1,) + frame, dtype=np.float32)
        if not np.all(np.isfinite(out)):
            raise BadInputError(where, f"{self.name} produced NaN or infinite values")
        return out

    def torch_module(self):
        """A ``torch.nn.Module`` for fine-tuning: ``forward(waves [B, S], lengths [B]) ->
        (frames [B, T, dim], frame_lengths [B])``. Only where ``finetunable``."""
        raise NotImplementedError(f"{self.name} cannot be fine-tuned")


class TextEncoder:
    """A list of strings -> one ``[T_i, dim]`` float32 array each."""

    name: ClassVar[str] = ""
    dim: int = 0
    frame_rate: None = None  # text has no time axis; kept so both kinds share the attribute
    finetunable: bool = False
    sentence_vector: bool = False  # True: one [1, dim] vector per text
    max_tokens: int | None = None  # longer inputs are truncated

    def __init__(self) -> None:
        self.truncated = 0  # texts truncated so far (over the encoder's limit)
        self.empty = 0  # empty/whitespace texts given the zero vector so far

    @property
    def id(self) -> str:
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> tuple[list[np.ndarray], int]:
        """Encode non-empty texts; return the arrays and how many were truncated."""
        raise NotImplementedError

    def encode(self, texts: list[str], where: list[str] | None = None) -> list[np.ndarray]:
        texts = [t if isinstance(t, str) else "" for t in texts]
        where = where or [f"text {i}" for i in range(len(texts))]
        out: list[np.ndarray | None] = [None] * len(texts)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        for i, t in enumerate(texts):
            if not t.strip():
                out[i] = np.zeros((1, self.dim), dtype=np.float32)
        self.empty += len(texts) - len(todo)
        if todo:
            arrays, truncated = self._encode([texts[i].strip() for i in todo])
            if truncated:
                self.truncated += truncated
                log.warning("%s: %d of %d texts longer than %s tokens were truncated",
                            self.name, truncated, len(todo), self.max_tokens)
            for i, a in zip(todo, arrays):
                a = np.asarray(a, dtype=np.float32)
                if a.ndim == 1:
                    a = a[None]
                if a.shape[0] == 0:
                    a = np.zeros((1, self.dim), dtype=np.float32)
                if a.ndim != 2 or a.shape[1] != self.dim:
                    raise BadInputError(where[i], f"{self.name} returned shape {a.shape}, expected [T, {self.dim}]")
                if not np.all(np.isfinite(a)):
                    raise BadInputError(where[i], f"{self.name} produced NaN or infinite values")
                out[i] = a
        return out  # type: ignore[return-value]

    def torch_module(self):
        """A ``torch.nn.Module`` for fine-tuning: ``forward(texts: list[str]) ->
        (tokens [B, T, dim], mask [B, T] bool)``. Empty texts give one zero vector, as in
        :meth:`encode`. Only where ``finetunable``."""
        raise NotImplementedError(f"{self.name} cannot be fine-tuned")


SPEECH_ENCODERS: Registry[type[SpeechEncoder]] = Registry("speech encoder", SpeechEncoder)
TEXT_ENCODERS: Registry[type[TextEncoder]] = Registry("text encoder", TextEncoder)


# ---------------------------------------------------------------------------------------------
# Checksums of weights, for encoder ids.


def _fingerprint_memo() -> Path:
    from koemo.paths import cache_root

    return cache_root() / "features" / "weights-sha256.json"


def fingerprint(files: list[Path]) -> str:
    """SHA-256 over the contents of ``files`` (sorted by name), memoised by path, size and mtime
    so a 1 GB checkpoint is hashed once per cache root."""
    from koemo.paths import atomic_write_text, sha256_file

    memo_path = _fingerprint_memo()
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for f in sorted(files, key=lambda p: p.name):
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = sha256_file(f)
            changed = True
        h.update(f.name.encode() + b"\0" + memo[key].encode())
    if changed:
        try:
            atomic_write_text(memo_path, json.dumps(memo, indent=0))
        except OSError:
            pass
    return h.hexdigest()


def installed_checksum(model_dir: Path, files: list[str] | None = None) -> str:
    """The checksum of an installed packaged model: from its install record where it lists
    checksums, else computed from its weight files."""
    record = model_dir / "koemo-install.json"
    sums: dict = {}
    if record.is_file():
        try:
            sums = json.loads(record.read_text(encoding="utf-8")).get("sha256") or {}
        except ValueError:
            sums = {}
    if files and all(f in sums for f in files):
        return hashlib.sha256("|".join(sums[f] for f in sorted(files)).encode()).hexdigest()
    weights = [model_dir / f for f in files] if files else weight_files(model_dir)
    return fingerprint([w for w in weights if w.is_file()])


def weight_files(model_dir: Path) -> list[Path]:
    """The files whose content decides a model's output (weights, configs, tokenizers)."""
    keep = (".safetensors", ".bin", ".json", ".model", ".txt", ".pt", ".pth")
    return sorted(p for p in Path(model_dir).rglob("*")
                  if p.is_file() and p.suffix in keep and p.name != "koemo-install.json"
                  and not p.name.startswith("."))


def num_threads() -> int:
    """Threads an encoder may use: ``$KOEMO_THREADS``, else torch's default."""
    env = os.environ.get("KOEMO_THREADS")
    if env:
        return max(1, int(env))
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover
        return os.cpu_count() or 1


def short(digest: str) -> str:
    return digest[:16]
