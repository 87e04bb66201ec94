"""Atomic bundle directories: a failed write leaves the old bundle; an interrupted swap recovers."""

from __future__ import annotations

import os

import pytest
import torch

from koemo.errors import KoemoError
from koemo.training.bundle import atomic_dir, read_meta, write_bundle


def test_failed_write_keeps_the_previous_bundle(tmp_path):
    out = tmp_path / "b"
    write_bundle(out, {"x": 1}, {"c": 1}, {"w": torch.ones(2)})
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "bundle.json").write_text("{}")
            raise RuntimeError("killed mid-write")
    assert read_meta(out)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_interrupted_swap_is_recovered(tmp_path):
    out = tmp_path / "b"
    write_bundle(out, {"x": 2}, {}, {"w": torch.ones(2)})
    os.replace(out, tmp_path / ".b.old-abc")  # killed between the two renames
    assert read_meta(out)["x"] == 2


def test_not_a_bundle(tmp_path):
    with pytest.raises(KoemoError, match="not a koemo model bundle"):
        read_meta(tmp_path)
