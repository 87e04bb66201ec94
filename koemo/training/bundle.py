"""Self-describing model bundles, written atomically, and the resume state inside them.

A bundle is a directory::

    OUT/
      bundle.json         format, koemo version, fusion name and sizes, input dims, label list,
                          training text, CR variant, encoder ids/versions, split (protocol, seed,
                          fold) and the sha256 of the training data, best epoch, history,
                          validation and test metrics, complete: true|false
      config.yaml         the resolved recipe (every field)
      model.safetensors   the weights of the best-on-validation epoch
      predictions/        test predictions per text source (JSONL, koemo.evaluation format)
      resume.pt           optimiser/model/RNG state of the last finished epoch (only while the
                          run is incomplete; removed when training ends)

Every update builds the whole directory under a temporary name beside ``OUT`` and swaps it in
with two renames (``OUT`` -> ``OUT.old-*``, temp -> ``OUT``), so a kill leaves either the previous
bundle or the new one; :func:`recover` puts an ``OUT.old-*`` back if a kill fell between the renames.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from koemo.errors import KoemoError

FORMAT = "koemo-bundle/1"
WEIGHTS = "model.safetensors"
META = "bundle.json"
CONFIG = "config.yaml"
RESUME = "resume.pt"


def recover(target: Path) -> None:
    """If a swap was interrupted (``OUT`` missing, ``OUT.old-*`` present), restore the old one."""
    target = Path(target)
    olds = sorted(target.parent.glob(f".{target.name}.old-*")) if target.parent.exists() else []
    if not target.exists() and olds:
        os.replace(olds[-1], target)
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_bundle(
    target: Path,
    meta: dict[str, Any],
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    resume_state: dict[str, Any] | None = None,
    predictions: dict[str, list] | None = None,
) -> Path:
    """Write a complete bundle directory atomically (see the module docstring)."""
    with atomic_dir(target) as tmp:
        (tmp / META).write_text(json.dumps({"format": FORMAT, **meta}, ensure_ascii=False, indent=1),
                                encoding="utf-8")
        (tmp / CONFIG).write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                                  encoding="utf-8")
        save_weights(weights, tmp / WEIGHTS)
        if resume_state is not None:
            torch.save(resume_state, tmp / RESUME)
        if predictions:
            from koemo.evaluation.metrics import write_predictions

            for source, preds in predictions.items():
                write_predictions(tmp / "predictions" / f"{source.replace(':', '_')}.jsonl", preds)
    return Path(target)


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    recover(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise KoemoError(f"{path}: not a koemo model bundle (no {META}); train one with: koemo train")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise KoemoError(f"{path}: bundle format {meta.get('format')!r}, this koemo reads {FORMAT}")
    return meta


def read_resume_state(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    recover(path)
    f = path / RESUME
    if not f.is_file():
        return None
    return torch.load(f, map_location="cpu", weights_only=False)


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]
    config: dict[str, Any]
    model: torch.nn.Module

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])


def load_bundle(path: str | Path, model: torch.nn.Module | None = None) -> Bundle:
    """Load a bundle: its metadata, resolved config and the fusion model with its best weights.

    Frozen-feature bundles rebuild the fusion model from ``bundle.json``; an end-to-end bundle
    needs ``model`` (the encoders + fusion module it was trained with) to load the weights into.
    """
    from koemo.fusion import build_fusion

    path = Path(path)
    meta = read_meta(path)
    config = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
    if model is None:
        if meta.get("end_to_end"):
            raise KoemoError(f"{path}: an end-to-end bundle; pass the encoders' module to load it")
        m = meta["model"]
        model = build_fusion(m["fusion"], meta["audio_dim"], meta["text_dim"], len(meta["labels"]),
                             hidden=m["hidden"], heads=m["heads"], layers=m["layers"], dropout=m["dropout"],
                             audio_pool=m.get("audio_pool", 1))
    state = load_weights(path / WEIGHTS)
    model.load_state_dict(state)
    model.eval()
    return Bundle(path, meta, config, model)
