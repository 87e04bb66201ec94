"""Shared fixtures: small synthetic audio, and the real EmotionTTS data from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from koemo.paths import data_dir


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes caches into its own temporary root, never the user's ~/.cache."""
    if "KOEMO_TEST_KEEP_CACHE" not in os.environ:
        monkeypatch.setenv("KOEMO_CACHE", str(tmp_path_factory.mktemp("cache")))
    # Installed models are shared (read-only for tests) so they are installed once per machine.
    monkeypatch.setenv("KOEMO_MODELS", os.environ.get("KOEMO_MODELS", str(Path.home() / ".cache/koemo/models")))


def tone(seconds: float = 1.0, sr: int = 16000, freq: float = 220.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A voiced-looking test signal: a tone with harmonics and a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    sig = sum(amp / k * np.sin(2 * np.pi * freq * k * t) for k in (1, 2, 3))
    return (sig + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def cp949_default(monkeypatch):
    """Text files read and written without an encoding use cp949, as on Korean Windows (whose
    locale encoding it is): code that forgets ``encoding="utf-8"`` garbles Korean or fails."""
    import pathlib

    read, write = pathlib.Path.read_text, pathlib.Path.write_text
    monkeypatch.setattr(pathlib.Path, "read_text",
                        lambda self, encoding=None, errors=None: read(self, encoding or "cp949", errors))
    monkeypatch.setattr(pathlib.Path, "write_text", lambda self, data, encoding=None, errors=None, newline=None:
                        write(self, data, encoding or "cp949", errors, newline))


@pytest.fixture
def write_wav(tmp_path):
    def make(name: str, seconds: float = 1.0, sr: int = 16000, **kw) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone(seconds, sr, **kw), sr)
        return path

    return make


@pytest.fixture(scope="session")
def emotiontts_root() -> Path:
    root = data_dir() / "emotiontts_open_db"
    if not root.exists():
        pytest.fail(f"EmotionTTS data not found at {root}; set KOEMO_DATA_DIR")
    return root


@pytest.fixture(scope="session")
def emotiontts_utts(emotiontts_root):
    from koemo.data.loaders import LOADERS
    from koemo.errors import SkipLog

    skips = SkipLog()
    utts = LOADERS.get("emotiontts")(emotiontts_root, skips)
    assert len(skips) == 0
    return utts


@pytest.fixture(scope="session")
def require_model():
    """``require_model("whisper-base")`` -> installed path; fails (not skips) when missing,
    because ``make test`` installs every packaged model before running the suite."""
    from koemo.models import installed_path
    from koemo.errors import ModelNotInstalledError

    def get(name: str) -> Path:
        try:
            return installed_path(name)
        except ModelNotInstalledError as e:
            pytest.fail(str(e))

    return get


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs, as in CI) for every Ray test of the session (Ray comes with
    ``pip install -e '.[all,dev]'``; a missing Ray fails these tests, it does not skip them)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def trained_folds(monkeypatch) -> list:
    """Every fold this process trains, alone or stacked, as ``(fusion, training text, protocol,
    seed, fold)`` when it finishes (a reused bundle is read, not trained, and adds nothing)."""
    from koemo.training.trainer import _FoldRun

    seen: list = []
    finish = _FoldRun.finish

    def counting(self, meta):
        result = finish(self, meta)
        assert result.history  # a trained fold reports its epochs
        r = self.recipe
        seen.append((r.model.fusion, r.train.text, r.split.protocol, r.split.seed, self.fold.name))
        return result

    monkeypatch.setattr(_FoldRun, "finish", counting)
    return seen
