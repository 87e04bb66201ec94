"""The wheel works outside the repository: recipes and static files ship inside the package, and an
installed wheel predicts a real clip through the Python API and the command."""

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

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh venv with koemo installed from its wheel (dependencies borrowed from this one),
    and a directory outside the repository to run it from."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("koemo-*.whl"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch & co.) come from this environment, koemo itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "KOEMO_DATA_DIR": str(data_dir()), "KOEMO_CACHE": str(tmp / "cache"), "PYTHONPATH": ""}
    where = subprocess.run([str(py), "-c", "import koemo; print(koemo.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(site)), where
    return {"bin": env_dir / "bin", "cwd": elsewhere, "env": env}


def test_a_wheel_installed_in_a_fresh_venv_finds_its_recipes(wheel_env):
    koemo, cwd, env = wheel_env["bin"] / "koemo", wheel_env["cwd"], wheel_env["env"]
    res = subprocess.run([str(koemo), "data", "stats", "-r", "emotiontts", "--json"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout[res.stdout.index("{"):])
    assert stats["utterances"] == 300 and stats["speakers"] == 15
    res = subprocess.run([str(koemo), "data", "stats", "-r", "emotiontts-demo", "--json"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr  # a variant finds its base inside the package too


def test_a_wheel_installed_in_a_fresh_venv_predicts_a_real_clip(wheel_env, trained_bundle, clip):
    """The Python API and ``koemo predict`` of the installed wheel, from outside the repository,
    agree on a real EmotionTTS clip; the web page's files are inside the installed package."""
    cwd, env = wheel_env["cwd"], {**wheel_env["env"], "KOEMO_MODELS": os.environ["KOEMO_MODELS"]}
    script = (
        "import json, sys, koemo\n"
        "from importlib import resources\n"
        "assert (resources.files('koemo.serving') / 'static' / 'index.html').is_file()\n"
        "r = koemo.Recognizer.from_pretrained(sys.argv[1]).predict_file(sys.argv[2])\n"
        "print(json.dumps(r.to_dict(), ensure_ascii=False))\n"
    )
    res = subprocess.run([str(wheel_env["bin"] / "python"), "-c", script, str(trained_bundle), str(clip)],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    api = json.loads(res.stdout.strip().splitlines()[-1])
    assert api["label"] in ("neutral", "happy", "sad", "angry")
    assert abs(sum(api["probabilities"].values()) - 1) < 1e-6
    assert any("\uac00" <= ch <= "\ud7a3" for ch in api["transcript"])
    res = subprocess.run([str(wheel_env["bin"] / "koemo"), "predict", str(clip), "--model", str(trained_bundle), "--json"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    cli = json.loads(res.stdout.strip().splitlines()[-1])
    assert cli["label"] == api["label"] and cli["transcript"] == api["transcript"]
    assert all(abs(cli["probabilities"][k] - p) < 1e-5 for k, p in api["probabilities"].items())
