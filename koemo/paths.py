"""Where data, caches and models live, and how files are written without ever half-existing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(explicit: str | Path | None = None) -> Path:
    """The root holding the datasets: ``--data-dir``, else ``$KOEMO_DATA_DIR``, else ``../shared/data``.

    ``../shared/data`` is looked up beside the current directory first and beside the checkout
    second, so both ``koemo`` run from the repo and the test suite find the shared data.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KOEMO_DATA_DIR")
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), REPO_ROOT):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.exists():
            return candidate
    return (Path.cwd() / ".." / "shared" / "data").resolve()


def cache_root(explicit: str | Path | None = None) -> Path:
    """Root of transcripts, features, models and bundles: ``$KOEMO_CACHE`` or ``~/.cache/koemo``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KOEMO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "koemo"


#: models known by name (``koemo predict|serve --model NAME``, ``Recognizer.from_pretrained(NAME)``),
#: each kept in ``$KOEMO_CACHE/bundles/NAME``, and the command that trains it there
NAMED_MODELS = {
    "default": "make demo",
    # the clip-window recipe: a fraction of the latency for ~3 points (docs/encoders.md)
    "fast": "koemo reproduce -r emotiontts-fast --only 'linear.*cr_asr' && "
            "koemo train --final -r emotiontts-fast --cv-seeds 5 --out {path}",
}


def named_bundle_dir(name: str) -> Path:
    """Where the named model ``name`` (:data:`NAMED_MODELS`) lives."""
    return cache_root() / "bundles" / name


def models_dir() -> Path:
    """Installed pretrained models (``koemo models install``); ``$KOEMO_MODELS`` overrides."""
    env = os.environ.get("KOEMO_MODELS")
    return Path(env).expanduser() if env else cache_root() / "models"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    A crash mid-write leaves the old file (or none), never a truncated one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
