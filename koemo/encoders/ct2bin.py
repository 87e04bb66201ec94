"""A reader for CTranslate2's ``model.bin`` (the format written by ``ModelSpec._serialize``).

Layout (little endian): ``u32 binary_version, str spec_name, u32 spec_revision, u32 n_variables``,
then per variable ``str name, u8 ndim, u32 dims[ndim], u8 dtype_id, u32 nbytes, raw bytes``,
then ``u32 n_aliases`` and ``(str alias, str target)`` pairs. A ``str`` is ``u16 length``
(including a trailing NUL) plus UTF-8 bytes. dtype ids follow ctranslate2/types.h:
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.

Quantized int8 weights come with a ``<name>_scale`` variable (one scale per output row);
:func:`read_ct2_variables` dequantizes them to float32 so callers never see int8.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from koemo.errors import BadInputError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2_variables(path: str | Path, prefix: str = "") -> tuple[dict[str, np.ndarray], dict]:
    """All variables whose name starts with ``prefix`` (others are skipped without reading),
    as numpy arrays, plus ``{"spec": name, "revision": int, "version": int, "dtypes": {...}}``."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    with open(path, "rb") as f:

        def u(fmt: str):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise BadInputError(path, "truncated CTranslate2 model.bin")
            return struct.unpack("<" + fmt, data)[0]

        def s() -> str:
            n = u("H")
            return f.read(n)[:-1].decode("utf-8")

        version = u("I")
        if version < 5 or version > 6:
            raise BadInputError(path, f"unsupported CTranslate2 binary version {version}")
        spec = s()
        revision = u("I")
        for _ in range(u("I")):
            name = s()
            shape = tuple(u("I") for _ in range(u("B")))
            type_id = u("B")
            nbytes = u("I")
            if not name.startswith(prefix):
                f.seek(nbytes, 1)
                continue
            raw = f.read(nbytes)
            if type_id == _BFLOAT16:
                arr = _bf16_to_f32(np.frombuffer(raw, dtype=np.uint16)).reshape(shape)
                dtypes[name] = "bfloat16"
            elif type_id in _DTYPES:
                arr = np.frombuffer(raw, dtype=_DTYPES[type_id]).reshape(shape)
                dtypes[name] = np.dtype(_DTYPES[type_id]).name
            else:
                raise BadInputError(path, f"variable {name} has unknown dtype id {type_id}")
            out[name] = arr
        aliases = {}
        for _ in range(u("I")):
            alias = s()
            aliases[alias] = s()
    for alias, target in aliases.items():
        if alias.startswith(prefix) and target in out:
            out[alias] = out[target]
    # int8 weights -> float32 with their per-row scales (CTranslate2: w_float = w_int8 / scale)
    for name in [n for n in out if n.endswith("_scale")]:
        base = name[: -len("_scale")]
        if base in out and out[base].dtype == np.int8:
            scale = out[name].astype(np.float32).reshape(-1, *([1] * (out[base].ndim - 1)))
            out[base] = out[base].astype(np.float32) / scale
            del out[name]
    info = {"spec": spec, "revision": revision, "version": version, "dtypes": dtypes}
    return out, info
