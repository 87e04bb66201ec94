"""Typed configuration: dataclasses loaded from a YAML recipe and overridden from the command line.

A recipe (``recipes/<dataset>.yaml``) names every part by registry key. Any field can be
overridden with ``--set section.field=value`` (value parsed as YAML), the way Hugging Face
examples override their dataclass arguments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from koemo.errors import KoemoError

T = TypeVar("T")


@dataclass
class DataConfig:
    """Which dataset, where it lives and which labels count."""

    dataset: str = "emotiontts"  # loader registry key: emotiontts | aihub | manifest
    root: str | None = None  # dataset directory; None = the loader's default under the data dir
    manifest: str | None = None  # where the prepared manifest is written (None = cache)
    label_set: str = "emotiontts4"  # a named label set (see koemo.data.labels) or comma-separated labels
    min_duration: float = 0.0  # seconds; shorter utterances are skipped (the paper: 0.5)
    max_duration: float | None = None  # seconds; longer ones are skipped (the paper: 8)


@dataclass
class SplitConfig:
    """How utterances are divided into train/validation/test."""

    # stratified (the paper's 8:1:1) | speaker | sentence | speaker-sentence (k-fold, group-disjoint)
    protocol: str = "speaker-sentence"
    folds: int = 3  # k for the group k-fold protocols
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # stratified protocol only
    seed: int = 0


@dataclass
class ASRConfig:
    """The speech recogniser that produces the STT-path text, and the noise it hears."""

    backend: str = "whisper-base"
    noise: str | None = None  # white | pink | babble
    snr: float | None = None  # dB
    seed: int = 0
    jobs: int = 1


@dataclass
class EncoderConfig:
    """The pretrained upstream encoders (s3prl's "upstream")."""

    speech: str = "whisper-base-encoder"
    text: str = "embeddinggemma-300m"
    speech_layer: int | None = None  # None = last layer
    finetune: bool = False  # False: read frozen features from the store


@dataclass
class ModelConfig:
    """The downstream fusion network."""

    fusion: str = "shallow"  # shallow | fusion-transformer | mult | audio-only | text-only
    hidden: int = 768
    heads: int = 8
    layers: int = 1
    dropout: float = 0.1
    audio_pool: int = 1  # average this many speech frames per step (4 = 80 ms for Whisper); 1 = off


@dataclass
class TrainConfig:
    """Optimisation and the training text (gold | asr:B | cr:B)."""

    text: str = "gold"
    lr: float = 5e-5
    epochs: int = 3
    batch_size: int = 32
    grad_accum: int = 1
    weight_decay: float = 0.0
    class_weights: bool = False
    early_stopping: int = 0  # patience in epochs; 0 = off
    cr_lambda: float = 1.0
    cr_ce_path: str = "gold"  # which path gets the cross-entropy: gold | stt
    cr_kl: str = "gold||stt"  # KL direction: "gold||stt" = KL(p_gold || p_stt), or "stt||gold"
    cr_detach_target: bool = True  # no KL gradient through the golden path (docs/training.md)
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 1  # epochs between resumable checkpoints; 0 = only the finished bundle
    # fp32 | bf16: bf16 runs the forward passes under autocast (matmuls in bfloat16, weights,
    # optimiser and losses in fp32); ~1.6x faster on CPUs with AVX512-BF16 (benchmarks/bench_training.py)
    precision: str = "fp32"


def _list(*items):
    return field(default_factory=lambda: list(items))


@dataclass
class EvalConfig:
    """What ``koemo evaluate`` tests on and the grid ``koemo reproduce`` runs (see
    :mod:`koemo.evaluation.reproduce`). Model specs: ``fusion@speech+text``,
    ``text-only@TEXT``, ``audio-only@SPEECH``, or a bare fusion name (the recipe's encoders)."""

    text: str = "asr:whisper-base"  # the ASR condition of the confusion/Grad-CAM figures
    seeds: int = 5
    table3: list[str] = _list(
        "text-only@fasttext-ko", "text-only@embeddinggemma-300m", "audio-only@mfcc",
        "audio-only@whisper-base-encoder", "shallow@mfcc+fasttext-ko",
        "shallow@whisper-base-encoder+embeddinggemma-300m",
        "fusion-transformer@whisper-base-encoder+embeddinggemma-300m",
        "mult@whisper-base-encoder+embeddinggemma-300m")
    table4_fusions: list[str] = _list("shallow", "fusion-transformer", "mult")
    asr_sources: list[str] = _list("asr:whisper-base", "asr:vosk-ko", "asr:whisper-base@babble-5db")
    snr_backend: str = "whisper-base"
    snr_noise: str = "babble"
    snr_values: list[float] = _list(20.0, 10.0, 5.0, 0.0)
    snr_fusion: str = "shallow"
    protocols: list[str] = _list("speaker", "stratified")  # compared with split.protocol
    protocol_models: list[str] = _list(
        "text-only@embeddinggemma-300m", "audio-only@whisper-base-encoder",
        "shallow@whisper-base-encoder+embeddinggemma-300m",
        "fusion-transformer@whisper-base-encoder+embeddinggemma-300m",
        "mult@whisper-base-encoder+embeddinggemma-300m")
    # Where the grid's fold bundles go (default <cache>/reproduce/<recipe name>). A grid with other
    # model or training settings gets its own, or its folds would replace the default grid's.
    runs_dir: str | None = None
    # A grid fold takes seconds to minutes: by default it is the unit of resume (no per-epoch
    # checkpoint, which for the attention fusions writes ~160 MB per epoch).
    checkpoint_every: int = 0


@dataclass
class Recipe:
    """Everything one experiment needs; what ``koemo train`` resolves and stores in a bundle."""

    name: str = "emotiontts"
    cache_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the declared field type, or say which field is wrong."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except KoemoError as e:
                errors.append(str(e))
        raise KoemoError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise KoemoError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise KoemoError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise KoemoError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise KoemoError(f"{where}: expected true or false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is Any:
        return value
    raise KoemoError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _from_dict(cls: type[T], values: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        prefix = f"{where}." if where else ""
        raise KoemoError(
            f"unknown config key {prefix}{sorted(unknown)[0]}; known: {', '.join(sorted(known))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    """A plain, YAML-safe dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as YAML)."""
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for item in overrides:
        if "=" not in item:
            raise KoemoError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parsed = yaml.safe_load(raw) if raw.strip() else ""
        node = values
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KoemoError(f"override '{item}': {part} is not a section")
        node[parts[-1]] = parsed
    return values


def load_config(
    cls: type[T] = Recipe, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> T:
    """Load ``cls`` from a YAML file (optional) with command-line overrides applied last."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise KoemoError(f"{path}: recipe file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise KoemoError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise KoemoError(f"{path}: a recipe must be a mapping of sections")
        values = loaded or {}
    values = apply_overrides(values, overrides)
    try:
        return _from_dict(cls, values)
    except KoemoError as e:
        raise KoemoError(f"{path or 'config'}: {e}") from None


def resolve_recipe(recipe: str | Path | None) -> Path | None:
    """Accept a path or a bare recipe name (``emotiontts`` -> ``recipes/emotiontts.yaml``)."""
    if recipe is None:
        return None
    p = Path(recipe)
    if p.exists():
        return p
    from koemo.paths import REPO_ROOT

    for candidate in (REPO_ROOT / "recipes" / f"{recipe}.yaml", Path("recipes") / f"{recipe}.yaml"):
        if candidate.exists():
            return candidate
    raise KoemoError(f"{recipe}: no such recipe file or recipe name")
