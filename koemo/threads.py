"""The process's compute threads: torch's intra-op count is the process's OpenMP count, which
other native libraries loaded beside it (CTranslate2, silero-vad) set as a side effect."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads_kept():
    """Put torch's intra-op thread count back after a library that sets OpenMP's. CTranslate2
    sets it to its ``intra_threads`` when a model loads (silero-vad to 1 when imported): without
    this, a ``--shard`` process started with ``OMP_NUM_THREADS=1`` trained with two spinning
    threads after loading Whisper, and two such processes on 2 cores ran 7x slower each
    (docs/training.md)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
