"""The wheel works outside the repository: recipes and static files ship inside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from koemo.paths import REPO_ROOT, data_dir


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_finds_its_recipes(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("koemo-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch & co.) come from this environment, koemo itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "KOEMO_DATA_DIR": str(data_dir()), "KOEMO_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": ""}
    where = subprocess.run([str(py), "-c", "import koemo; print(koemo.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(site)), where
    res = subprocess.run([str(env_dir / "bin" / "koemo"), "data", "stats", "-r", "emotiontts", "--json"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout[res.stdout.index("{"):])
    assert stats["utterances"] == 300 and stats["speakers"] == 15
    res = subprocess.run([str(env_dir / "bin" / "koemo"), "data", "stats", "-r", "emotiontts-demo", "--json"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr  # a variant finds its base inside the package too
