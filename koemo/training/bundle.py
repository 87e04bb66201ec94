"""The model bundle: its format, version, writing, reading, finding, and the model it rebuilds.

This module is the one owner of the bundle contract; the trainer writes through it, and
``evaluate``, ``reproduce``, ``predict`` and ``serve`` read through it. A bundle is a directory::

    OUT/
      bundle.json         format (``koemo-bundle/2``), koemo version, ``model`` (the recipe's
                          model section: fusion, sizes, per-fusion ``options``), input dims, label
                          list, training text, CR variant, encoder ids/versions, split (protocol,
                          seed, fold) and the sha256 of the training data, best epoch, history,
                          validation and test metrics, complete: true|false
      config.yaml         the resolved recipe (every field)
      model.safetensors   the weights of the best-on-validation epoch
      predictions/        test predictions per text source (JSONL, :mod:`koemo.metrics` format)
      inputs.safetensors  arrays the input stage needs in service (the speech normaliser's corpus
                          statistics), when there are any
      resume.pt           optimiser/model/RNG state of the last finished epoch (only while the
                          run is incomplete; removed when training ends)
      fusion.onnx         the fusion head exported to ONNX, and ``fusion.int8.onnx`` its int8
                          dynamic quantisation, each with a ``.json`` sidecar: written only by
                          ``koemo export`` (:mod:`koemo.serving.export`), never by training (a
                          retrained bundle is a new directory without them)

Every update builds the whole directory under a temporary name beside ``OUT`` and swaps it in
with two renames (``OUT`` -> ``OUT.old-*``, temp -> ``OUT``), so a kill leaves either the previous
bundle or the new one; :func:`recover` puts an ``OUT.old-*`` back if a kill fell between the renames.

Versions: ``koemo-bundle/1`` (before per-fusion options) is read by upgrading its metadata (its
model section gains ``options: {}``); a version this koemo does not know is refused with a
one-line reason, and so is loading the model of a bundle that lacks what rebuilding it needs
(model section, input dims, labels).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from koemo.errors import KoemoError

log = logging.getLogger("koemo")

FORMAT = "koemo-bundle/2"
WEIGHTS = "model.safetensors"
META = "bundle.json"
CONFIG = "config.yaml"
RESUME = "resume.pt"
PREDICTIONS = "predictions"
INPUTS = "inputs.safetensors"
LONE_HEAD = "lone"  # a second bundle inside a final one: the head for lone clips (train.lone_head)
ONNX = "fusion.onnx"  # koemo export (koemo.serving.export); sidecar: ONNX + ".json"
ONNX_INT8 = "fusion.int8.onnx"


def temperatures(meta: dict) -> tuple[float, float]:
    """``(T, T_lone)`` from a bundle's meta: the calibration temperature of a speaker-normalised
    clip and of a clip the corpus statistics normalise (``koemo train --final``); a bundle without
    them: 1.0, and T for T_lone."""
    cal = meta.get("calibration") or {}
    t = float(cal.get("temperature", 1.0))
    return t, float((cal.get("corpus_normalised") or {}).get("temperature", t))


# ---------------------------------------------------------------------------------------------
# atomic directories


def recover(target: Path) -> None:
    """If a swap was interrupted (``OUT`` missing, ``OUT.old-*`` present), restore the old one
    (of several, the last written: their names are random); remove the other leftovers."""
    target = Path(target)
    olds = list(target.parent.glob(f".{target.name}.old-*")) if target.parent.exists() else []
    if not target.exists() and olds:
        newest = max(olds, key=_written)
        os.replace(newest, target)
        olds.remove(newest)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def _written(path: Path) -> tuple[float, str]:
    """When ``path`` was last written (0 if it vanished meanwhile: another process's cleanup), then its name."""
    try:
        return path.stat().st_mtime, path.name
    except OSError:
        return 0.0, path.name


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


# ---------------------------------------------------------------------------------------------
# writing


def predictions_file(source: str) -> str:
    """The file name a text source's predictions have inside a bundle (``asr:b@x`` -> ``asr_b@x.jsonl``)."""
    return source.replace(":", "_").replace("/", "_") + ".jsonl"


def describe_model(model_cfg, fusion: torch.nn.Module) -> dict[str, Any]:
    """What a bundle records to rebuild ``fusion``: the model section and the input dims."""
    from koemo.config import to_dict

    return {"model": to_dict(model_cfg), "audio_dim": getattr(fusion, "input_audio_dim", getattr(fusion, "audio_dim", None)),
            "text_dim": getattr(fusion, "text_dim", None), "audio_layers": getattr(fusion, "audio_layers", 1)}


def write_bundle(
    target: Path,
    meta: dict[str, Any],
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    resume_state: dict[str, Any] | None = None,
    predictions: dict[str, list] | None = None,
    inputs: dict[str, Any] | None = None,
) -> Path:
    """Write a complete bundle directory atomically (see the module docstring)."""
    with atomic_dir(target) as tmp:
        (tmp / META).write_text(json.dumps({"format": FORMAT, **meta}, ensure_ascii=False, indent=1),
                                encoding="utf-8")
        (tmp / CONFIG).write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                                  encoding="utf-8")
        save_weights(weights, tmp / WEIGHTS)
        if inputs:
            save_weights({k: torch.as_tensor(v) for k, v in inputs.items()}, tmp / INPUTS)
        if resume_state is not None:
            torch.save(resume_state, tmp / RESUME)
        if predictions:
            from koemo.metrics import write_predictions

            for source, preds in predictions.items():
                write_predictions(tmp / PREDICTIONS / predictions_file(source), preds)
    return Path(target)


# ---------------------------------------------------------------------------------------------
# reading


def _upgrade_v1(meta: dict[str, Any]) -> dict[str, Any]:
    """A ``koemo-bundle/1`` bundle's metadata in the current form: its model section gains the
    fields added since (``options``, and ``audio_pool`` for the oldest), at their defaults."""
    from koemo.config import ModelConfig, to_dict

    model = meta.get("model")
    if isinstance(model, dict) and "fusion" in model:
        meta = {**meta, "model": {**to_dict(ModelConfig()), **model}}
    return {**meta, "format": FORMAT}


_READERS = {"koemo-bundle/1": _upgrade_v1, FORMAT: lambda meta: meta}


def read_meta(path: str | Path) -> dict[str, Any]:
    """``bundle.json`` of the bundle at ``path``, upgraded to the current format; one-line errors
    for a directory that is no bundle, an unreadable file or an unknown format."""
    path = Path(path)
    recover(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise KoemoError(f"{path}: not a koemo model bundle (no {META}); train one with: koemo train")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KoemoError(f"{meta_path}: unreadable bundle metadata ({e})") from None
    if not isinstance(meta, dict):
        raise KoemoError(f"{meta_path}: bundle metadata is not a JSON object")
    reader = _READERS.get(meta.get("format"))
    if reader is None:
        raise KoemoError(f"{path}: bundle format {meta.get('format')!r}, this koemo reads "
                         f"{', '.join(sorted(_READERS))}")
    return reader(meta)


def update_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Replace a finished bundle's ``bundle.json`` (atomically), e.g. to add its calibration."""
    from koemo.paths import atomic_write_text

    atomic_write_text(Path(path) / META, json.dumps({**meta, "format": FORMAT}, ensure_ascii=False, indent=1))


def read_resume_state(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    recover(path)
    f = path / RESUME
    if not f.is_file():
        return None
    return torch.load(f, map_location="cpu", weights_only=False)


def bundle_done(out: str | Path, fingerprint: str) -> bool:
    """Does ``out`` hold a complete bundle of exactly this run (same fingerprint)?"""
    out = Path(out)
    if not (out / META).exists():
        return False
    try:
        meta = read_meta(out)
    except KoemoError:
        return False
    return bool(meta.get("complete")) and meta.get("fingerprint") == fingerprint


def read_predictions(bundle: Path, source: str) -> list | None:
    """A bundle's stored test predictions for ``source`` (seed taken from the bundle's split),
    or None if it has none for that source."""
    from koemo.metrics import read_predictions as read_jsonl

    path = Path(bundle) / PREDICTIONS / predictions_file(source)
    if not path.is_file():
        return None
    preds = read_jsonl(path)
    seed = (read_meta(bundle).get("split") or {}).get("seed")
    if seed is not None:
        for p in preds:
            p.seed = int(seed)
    return preds


def stored_sources(bundle: Path) -> list[str]:
    """The names of the prediction files a bundle holds (for messages)."""
    return sorted(p.stem for p in (Path(bundle) / PREDICTIONS).glob("*.jsonl"))


# ---------------------------------------------------------------------------------------------
# finding


def find_bundles(target: str | Path) -> list[Path]:
    """``target`` itself if it is a bundle, else its bundle subdirectories (recursively, sorted;
    temporary and hidden directories skipped)."""
    target = Path(target)
    if (target / META).is_file():
        return [target]
    return sorted(p.parent for p in target.rglob(META)
                  if not any(part.startswith(".") for part in p.relative_to(target).parts))


def resolve_bundle(path: str | Path) -> Path:
    """``path`` if it is a bundle; for a training run directory (``koemo train --out``, one bundle
    per fold) the complete bundle with the best validation weighted F1 (ties: the first by name)."""
    path = Path(path)
    candidates = find_bundles(path)
    if candidates == [path]:
        return path
    if not candidates:
        raise KoemoError(f"{path}: not a koemo model bundle (no {META}) and no bundles inside; "
                         "train one with: koemo train")

    def valid_f1(bundle: Path) -> float:
        meta = read_meta(bundle)
        f1 = ((meta.get("metrics") or {}).get("valid") or {}).get("weighted_f1")
        usable = meta.get("complete") and not meta.get("end_to_end") and isinstance(f1, (int, float))
        return float(f1) if usable and f1 == f1 else float("-inf")

    scored = [(valid_f1(b), b) for b in candidates]
    best_f1, best = max(scored, key=lambda x: x[0])  # max keeps the first of equals
    if best_f1 == float("-inf"):
        raise KoemoError(f"{path}: none of its {len(candidates)} bundles is complete")
    if len(candidates) > 1:
        log.info("%s: using %s (best validation weighted F1 %.3f of %d bundles)",
                 path, best.relative_to(path), best_f1, len(candidates))
    return best


# ---------------------------------------------------------------------------------------------
# loading


def build_model(meta: dict[str, Any], path: Path | str = "bundle") -> torch.nn.Module:
    """The fusion model a (current-format) bundle's metadata describes, untrained; a bundle
    without the model section or input dims it is rebuilt from is refused with the reason."""
    from koemo.config import ModelConfig, from_dict
    from koemo.fusion import build_from_config

    model = meta.get("model")
    if not isinstance(model, dict) or "fusion" not in model:
        raise KoemoError(f"{path}: the bundle records no model section to rebuild the model from; retrain it")
    if not (meta.get("audio_dim") and meta.get("text_dim") and meta.get("labels")):
        raise KoemoError(f"{path}: the bundle records no input dims or labels to rebuild the model from; "
                         "retrain it with this koemo")
    model_cfg = from_dict(ModelConfig, model, f"{path}: model")
    return build_from_config(model_cfg, meta["audio_dim"], meta["text_dim"], len(meta["labels"]),
                             int(meta.get("audio_layers", 1)))


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]
    config: dict[str, Any]
    model: torch.nn.Module

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    def input_arrays(self) -> dict[str, Any]:
        """The arrays of ``inputs.safetensors`` (numpy), empty for a bundle without them."""
        f = self.path / INPUTS
        return {k: v.numpy() for k, v in load_weights(f).items()} if f.is_file() else {}


def load_bundle(path: str | Path, model: torch.nn.Module | None = None) -> Bundle:
    """Load a bundle: its metadata, resolved config and the fusion model with its best weights.

    Frozen-feature bundles rebuild the fusion model from ``bundle.json``; an end-to-end bundle
    needs ``model`` (the encoders + fusion module it was trained with) to load the weights into.
    """
    path = Path(path)
    meta = read_meta(path)
    try:
        config = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise KoemoError(f"{path / CONFIG}: unreadable ({str(e).splitlines()[0]})") from None
    if model is None:
        if meta.get("end_to_end"):
            raise KoemoError(f"{path}: an end-to-end bundle; pass the encoders' module to load it")
        model = build_model(meta, path)
    if not (path / WEIGHTS).is_file():
        raise KoemoError(f"{path}: no {WEIGHTS} (an incomplete copy of a bundle?)")
    model.load_state_dict(load_weights(path / WEIGHTS))
    model.eval()
    return Bundle(path, meta, config, model)
