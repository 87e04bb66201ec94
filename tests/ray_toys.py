"""Functions the Ray tests send to workers, in a module that imports nothing heavy (a restarted
worker imports it again)."""

from __future__ import annotations

import os
from pathlib import Path


def build(log: Path) -> int:
    with open(log, "a") as f:  # one line per model built
        f.write(f"{os.getpid()}\n")
    return 10


def square_plus(offset: int, x: int) -> tuple[int, int]:
    return os.getpid(), offset + x * x


def dies_once(marker: Path, offset: int, x: int) -> int:
    if x == 3 and not marker.exists():
        marker.touch()
        os._exit(1)  # the worker process is killed mid-item
    return offset + x * x


def not_installed() -> None:
    from koemo.errors import ModelNotInstalledError

    raise ModelNotInstalledError("whisper-base")
