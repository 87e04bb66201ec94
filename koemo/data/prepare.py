"""``koemo data prepare|stats|split`` as functions: dataset on disk -> manifest -> splits."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from koemo.config import Recipe
from koemo.data.labels import resolve_label_set
from koemo.data.loaders import LOADERS
from koemo.data.manifest import Utterance, read_manifest, write_manifest
from koemo.data.splits import Fold, folds_of, save_folds, split_path
from koemo.errors import KoemoError, SkipLog
from koemo.paths import cache_root, data_dir

log = logging.getLogger("koemo")

DEFAULT_SUBDIRS = {"emotiontts": "emotiontts_open_db", "aihub": "aihub_multimodal_video"}
DOWNLOADS = {"emotiontts": "https://github.com/emotiontts/emotiontts_open_db.git"}


def dataset_root(recipe: Recipe, data_dir_override: str | None = None) -> Path:
    if recipe.data.root:
        root = Path(recipe.data.root).expanduser()
        return root if root.is_absolute() or root.exists() else data_dir(data_dir_override) / root
    if recipe.data.dataset == "manifest":
        raise KoemoError("dataset 'manifest' needs data.root: the path of your CSV/JSONL manifest")
    return data_dir(data_dir_override) / DEFAULT_SUBDIRS.get(recipe.data.dataset, recipe.data.dataset)


def manifest_path(recipe: Recipe) -> Path:
    if recipe.data.manifest:
        return Path(recipe.data.manifest).expanduser()
    return cache_root(recipe.cache_dir) / "manifests" / f"{recipe.name}.jsonl"


def prepare(recipe: Recipe, data_dir_override: str | None = None) -> tuple[Path, list[Utterance], SkipLog]:
    """Load the dataset, keep the recipe's labels and durations, write the manifest atomically."""
    root = dataset_root(recipe, data_dir_override)
    if not root.exists():
        hint = f"; fetch it with: koemo data download {recipe.data.dataset}" if recipe.data.dataset in DOWNLOADS else ""
        raise KoemoError(f"{root}: dataset directory not found (set --data-dir or KOEMO_DATA_DIR){hint}")
    skips = SkipLog()
    loader = LOADERS.get(recipe.data.dataset)
    utts = loader(root, skips)
    labels = resolve_label_set(recipe.data.label_set)
    kept = []
    for u in utts:
        if u.label not in labels:
            continue
        if u.duration and u.duration < recipe.data.min_duration:
            continue
        if recipe.data.max_duration and u.duration > recipe.data.max_duration:
            continue
        kept.append(u)
    if len(kept) < len(utts):
        log.info("%d utterances outside the label set or duration range", len(utts) - len(kept))
    if not kept:
        raise KoemoError(f"{root}: no usable utterances ({skips.summary(0)})")
    path = manifest_path(recipe)
    _keep_transcripts(path, kept)
    path = write_manifest(path, kept)
    return path, kept, skips


def _keep_transcripts(path: Path, utts: list[Utterance]) -> None:
    """Re-preparing must not lose ``koemo transcribe`` columns of an utterance whose audio is the same."""
    if not path.exists():
        return
    try:
        old = {u.id: u for u in read_manifest(path)}
    except KoemoError:
        return  # an unreadable old manifest is simply replaced
    for u in utts:
        prev = old.get(u.id)
        if prev and prev.audio == u.audio and prev.start == u.start and prev.end == u.end:
            u.transcripts = {**prev.transcripts, **u.transcripts}


def load_or_prepare(recipe: Recipe, data_dir_override: str | None = None) -> tuple[Path, list[Utterance]]:
    path = manifest_path(recipe)
    if path.exists():
        return path, read_manifest(path)
    path, utts, _ = prepare(recipe, data_dir_override)
    return path, utts


def stats(utts: list[Utterance]) -> dict:
    durations = [u.duration for u in utts]
    return {
        "utterances": len(utts),
        "speakers": len({u.speaker for u in utts}),
        "sentences": len({u.group for u in utts}),
        "labels": dict(sorted(Counter(u.label for u in utts).items())),
        "per_speaker": dict(sorted(Counter(u.speaker for u in utts).items())),
        "duration_total_s": round(sum(durations), 2),
        "duration_mean_s": round(sum(durations) / max(1, len(durations)), 3),
        "duration_min_s": round(min(durations), 3) if durations else 0.0,
        "duration_max_s": round(max(durations), 3) if durations else 0.0,
        "transcripts": dict(Counter(s for u in utts for s in u.transcripts)),
    }


def split(recipe: Recipe, utts: list[Utterance], manifest: Path, seed: int | None = None) -> tuple[Path, list[Fold]]:
    seed = recipe.split.seed if seed is None else seed
    folds = folds_of(recipe.split, utts, seed=seed)
    path = split_path(manifest, recipe.split.protocol, recipe.split.folds, seed, recipe.split.valid)
    save_folds(path, folds, {"protocol": recipe.split.protocol, "folds_k": recipe.split.folds,
                             "seed": seed, "manifest": str(manifest)})
    return path, folds


def download(dataset: str, dest: str | None = None) -> Path:
    """Clone a public dataset repository (needs internet; EmotionTTS only)."""
    if dataset not in DOWNLOADS:
        raise KoemoError(f"no download for '{dataset}'; known: {', '.join(DOWNLOADS)} (AIHub needs a login at aihub.or.kr)")
    target = Path(dest) if dest else data_dir() / DEFAULT_SUBDIRS[dataset]
    if target.exists() and any(target.iterdir()):
        log.info("%s already exists; nothing to do", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a clone killed half-way starts over
    cmd = ["git", "clone", "--depth", "1", DOWNLOADS[dataset], str(tmp)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise KoemoError("git is not installed; install git or download the dataset by hand") from None
    except subprocess.CalledProcessError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        last = (e.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise KoemoError(f"could not clone {DOWNLOADS[dataset]}: {last[0]}") from None
    except subprocess.TimeoutExpired:
        raise KoemoError(f"cloning {DOWNLOADS[dataset]} timed out") from None
    tmp.rename(target)
    return target
