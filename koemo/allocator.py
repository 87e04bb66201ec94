"""glibc's allocator kept from handing memory back to the system after every tensor.

A training step on a CPU allocates its batch and activations (megabytes each) and frees them a
millisecond later. By default glibc returns the top of the heap to the system when more than
128 KiB is free (and serves larger blocks from fresh ``mmap``), so the next step page-faults the
same memory in again: measured here, a linear fold's step took 8.7 ms, of which ~4.6 ms were page
faults; with the heap kept (:func:`tune_allocator`) 4.1 ms (docs/training.md). The
cost is a resident heap that does not shrink after a peak, which a training process wants anyway.

Training only (:func:`koemo.training.run.run_folds` applies it): a service runs requests on many
threads, each with its own glibc arena, and with a 64 MiB top pad and no trimming every arena a
new thread touches stayed resident: the 10-minute soak of ``koemo serve`` grew 1.50 -> 1.86 GB
(+24%) in 64-100 MB steps with these settings, +14% without them, and +6.7% with the service's
threads sharing two arenas (:func:`limit_arenas`, what ``koemo serve`` does; docs/serving.md "Soak
test"). ``KOEMO_MALLOC=system`` keeps glibc's defaults everywhere; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8

SETTINGS = {
    M_TRIM_THRESHOLD: 1 << 30,  # give the heap back only past 1 GiB free
    M_TOP_PAD: 64 << 20,  # grow the heap 64 MiB at a time
    M_MMAP_THRESHOLD: 32 << 20,  # blocks up to 32 MiB (glibc's largest) come from the heap
}

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt`` (once per process). True when applied."""
    global _tuned
    if _tuned is not None:
        return _tuned
    mallopt = _mallopt()
    _tuned = mallopt is not None and all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _tuned


def _mallopt():
    """glibc's ``mallopt``, or None where koemo leaves the allocator alone (``KOEMO_MALLOC=system``,
    not Linux, not glibc)."""
    if os.environ.get("KOEMO_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


#: arenas for a service: glibc gives each new thread its own (up to 8 per core), each grows and
#: fragments on its own, so a threaded server's resident memory creeps up with its thread count
SERVICE_ARENAS = 2


def limit_arenas(n: int = SERVICE_ARENAS) -> bool:
    """Let all threads share ``n`` malloc arenas (``koemo serve``); True when applied."""
    mallopt = _mallopt()
    return mallopt is not None and mallopt(M_ARENA_MAX, n) == 1
