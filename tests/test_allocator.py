"""koemo's allocator settings (koemo/allocator.py): a freed block stays in the heap for the next
step instead of going back to the system."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json
from koemo.allocator import tune_allocator
tuned = tune_allocator()
libc = ctypes.CDLL("libc.so.6")

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 << 20  # a batch of a stacked step
p = libc.malloc(size)
ctypes.memset(p, 1, size)
mapped = libc.mallinfo2().hblkhd >= size  # served by mmap, not the heap
libc.free(p)
kept = libc.mallinfo2().fordblks >= size  # freed into the heap and kept there
print(json.dumps({"tuned": tuned, "mapped": mapped, "kept": kept, "again": tune_allocator()}))
"""


def _probe(**env) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_freed_batch_stays_in_the_heap_and_system_keeps_glibcs_default():
    tuned = _probe(KOEMO_MALLOC="")
    assert tuned == {"tuned": True, "mapped": False, "kept": True, "again": True}
    system = _probe(KOEMO_MALLOC="system")
    assert system["tuned"] is False and system["mapped"] is True and system["kept"] is False
