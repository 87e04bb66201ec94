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
    # | text-neutral (test on the clips whose sentence is read in several emotions; koemo.data.splits)
    protocol: str = "speaker-sentence"
    folds: int = 3  # k for the group k-fold protocols
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # stratified protocol only
    seed: int = 0
    # holdout: a validation set carved from the training side picks the best epoch;
    # none: every training-side clip trains and the last of train.epochs is kept
    valid: str = "holdout"


@dataclass
class ASRConfig:
    """The speech recogniser that produces the STT-path text, and the noise it hears."""

    backend: str = "whisper-base"
    noise: str | None = None  # white | pink | babble
    snr: float | None = None  # dB
    seed: int = 0
    jobs: int = 1
    # whisper-base transcripts decoded from the speech encoder's own pass (koemo.encoders.one_pass),
    # as `koemo predict` and `koemo serve` decode them: training sees the service's transcripts,
    # and one Whisper pass per clip fills both the transcript cache and the feature store
    shared_pass: bool = False


@dataclass
class EncoderConfig:
    """The pretrained upstream encoders (s3prl's "upstream")."""

    speech: str = "whisper-base-encoder"
    text: str = "embeddinggemma-300m"
    speech_layer: int | str | None = None  # None = last layer; k; "all": every layer, mixed by the head
    # With speech_layer: all, the layers the head reads (0 = the front end, 6 = whisper-base's
    # final output; the prosodic functionals, where on, are one more); null = every one. The
    # statistics still normalise every layer first (docs/voice.md, "Speech recorded elsewhere").
    speech_layers: list[int] | None = None
    # What a Whisper encoder sees of each 30 s window: 30s (zero-padded, as Whisper was trained),
    # clip (the clip's frames plus 1 s: a fraction of the work for short clips; other features) or
    # 30s-merged (the whole window, its padding after the clip + 1 s merged into one token per 8
    # frames: a third of the work for a 5 s clip, the same scores; the shipped recipe's)
    speech_window: str = "30s"
    finetune: bool = False  # False: read frozen features from the store
    # none | speaker: standardise each speaker's (in service: session's) frames by their own
    # statistics; groups under normalise_min_clips clips use the training corpus's (koemo.fusion.inputs)
    normalise: str = "none"
    normalise_min_clips: int = 3
    # Frames averaged into one before a sequence head reads them, in training and in service
    # (16 = 320 ms for Whisper); 1 = every frame. Pooled heads read clip statistics instead.
    speech_pool: int = 1
    # true: each clip's prosodic functionals (pitch, loudness, voice quality, spectral balance,
    # rhythm; koemo.encoders.prosody) appended to the speech encoder's frames as one more layer
    prosody: bool = False
    # Seconds: each clip cut to its speech plus this margin before the speech encoder, as the
    # service cuts a short recording (koemo.data.audio.EdgeTrim); null = as the corpus recorded it.
    # A bundle trained so makes it the service's default margin.
    trim_margin: float | None = None


@dataclass
class ModelConfig:
    """The downstream fusion network."""

    fusion: str = "shallow"  # shallow | fusion-transformer | mult | audio-only | text-only
    hidden: int = 768
    heads: int = 8
    layers: int = 1
    dropout: float = 0.1
    audio_pool: int = 1  # average this many speech frames per step (4 = 80 ms for Whisper); 1 = off
    # What only one fusion has: keyword options of its class (koemo.fusion.registry), e.g. {pooling: stats}
    options: dict[str, Any] = field(default_factory=dict)
    # Standardise every input feature with the training data's mean and sd (kept in the bundle)
    standardise: bool = False
    # With every speech layer (encoders.speech_layer: all): weighted (a learned weighted sum,
    # SUPERB) or concat (side by side)
    layer_mix: str = "weighted"
    # How the pooled heads (shallow) summarise the speech frames: mean (the paper's) or stats
    # (mean and standard deviation, computed once per clip: koemo.fusion.inputs)
    pooling: str = "mean"


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
    # modality dropout: the probability that an example's text (audio) is blanked in a training
    # step, as an empty transcript (silence) would be, so the model cannot lean on one modality
    text_dropout: float = 0.0
    audio_dropout: float = 0.0
    early_stopping: int = 0  # patience in epochs; 0 = off
    # constant | cosine: the learning rate of epoch e is lr * (1 + cos(pi e / epochs)) / 2, so the
    # last epochs take small steps (a run without validation keeps its last epoch's weights)
    lr_schedule: str = "constant"
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
    # train the folds of a grid row together as one stacked model (torch.func.vmap), each fold with
    # its own weights, optimiser state, batches, draws, validation scores and early stop
    # (koemo.training.stacked); several processes or end-to-end encoders train one at a time
    stack_folds: bool = True
    # `koemo train --final` only: overrides (as --set takes them) of a second head trained into
    # the bundle's `lone/` and used for a clip normalised by the corpus statistics (no session),
    # e.g. ["augment.copies=1", "augment.noise=babble"]; [] = one head (koemo.training.final)
    lone_head: list[str] = field(default_factory=list)


@dataclass
class AugmentConfig:
    """Augmented copies of the training clips (:mod:`koemo.training.augment`); 0 copies = off."""

    copies: int = 0
    noise: str | None = None  # white | pink | babble
    snr: list[float] = field(default_factory=lambda: [5.0, 20.0])  # dB range of the noise
    speed: list[float] | None = None  # e.g. [0.9, 1.1]
    volume_db: list[float] | None = None  # e.g. [-6, 6]
    # share of copies passed through a random recording channel (a microphone/line response, and
    # a room half the time: koemo.data.channel), after the noise; 0 = off
    channel: float = 0.0
    frame_mask: float = 0.0  # share of each copy's frames left out
    # 1: one more copy of each clip normalised by the training corpus's statistics instead of its
    # speaker's (encoders.normalise: speaker only), so the model also learns the input a request
    # without a session (or a folder of several speakers) gives it
    corpus_normalised: int = 0
    # k > 0: one more copy of each clip normalised by the statistics of a random group of k
    # speakers (its own among them), the input `koemo predict DIR` gives a folder of several
    # speakers; 0 = off (encoders.normalise: speaker only)
    mixed_groups: int = 0
    seed: int = 0


@dataclass
class EvalConfig:
    """What ``koemo evaluate`` tests on and the grid ``koemo reproduce`` runs (see
    :mod:`koemo.experiments`). The grid lives in recipes (``paper-grid.yaml`` is the paper's);
    empty lists here mean "no such section". Model specs: ``fusion@speech+text``,
    ``text-only@TEXT``, ``audio-only@SPEECH``, or a bare fusion name (the recipe's encoders)."""

    text: str = "asr:whisper-base"  # the ASR condition of the confusion/Grad-CAM figures
    seeds: int = 5
    table3: list[str] = field(default_factory=list)  # models trained and tested on human text
    table4_fusions: list[str] = field(default_factory=list)  # x asr_sources: ASR-trained vs. CR
    asr_sources: list[str] = field(default_factory=list)
    snr_backend: str = "whisper-base"
    snr_noise: str = "babble"
    snr_values: list[float] = field(default_factory=list)
    snr_fusion: str = "shallow"
    protocols: list[str] = field(default_factory=list)  # compared with split.protocol
    protocol_models: list[str] = field(default_factory=list)
    # every Table 3/4 job also under the text-neutral protocol, and the main protocol's
    # text-neutral clips scored apart (koemo.data.splits.text_neutral_ids)
    text_neutral: bool = False
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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
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
    if origin is dict:
        if not isinstance(value, dict):
            raise KoemoError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
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


def from_dict(cls: type[T], values: dict, where: str = "") -> T:
    """``cls`` from a plain dict (a bundle's recorded section, say), checked like a recipe."""
    return _from_dict(cls, values, where)


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


def with_overrides(config: T, overrides: Sequence[str]) -> T:
    """A copy of ``config`` with ``section.key=value`` overrides applied (as ``--set`` takes them)."""
    return _from_dict(type(config), apply_overrides(to_dict(config), overrides))


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe file as a plain dict, its ``base:`` recipe (a name or a path beside it) merged in
    underneath, so a variant states only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise KoemoError(f"{path}: recipe file not found")
    if path.resolve() in _seen:
        raise KoemoError(f"{path}: recipe bases form a loop ({' -> '.join(p.name for p in _seen)})")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise KoemoError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise KoemoError(f"{path}: a recipe must be a mapping of sections")
    values = dict(loaded or {})
    base = values.pop("base", None)
    if base is None:
        return values
    beside = path.parent / f"{base}.yaml"
    base_path = beside if beside.is_file() else resolve_recipe(str(base))
    return _merge(read_recipe(base_path, _seen + (path.resolve(),)), values)


def load_config(
    cls: type[T] = Recipe, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> T:
    """Load ``cls`` from a YAML file (optional, with its ``base:`` chain) and command-line
    overrides applied last."""
    values = read_recipe(path) if path is not None else {}
    values = apply_overrides(values, overrides)
    try:
        return _from_dict(cls, values)
    except KoemoError as e:
        raise KoemoError(f"{path or 'config'}: {e}") from None


#: recipes that ship inside the package (``koemo/recipes``), so an installed wheel finds them
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(recipe: str | Path | None) -> Path | None:
    """Accept a path or a bare recipe name (``emotiontts`` -> ``koemo/recipes/emotiontts.yaml``)."""
    if recipe is None:
        return None
    p = Path(recipe)
    if p.is_file():
        return p
    candidate = RECIPES_DIR / f"{recipe}.yaml"
    if candidate.is_file():
        return candidate
    raise KoemoError(f"{recipe}: no such recipe file or recipe name (shipped: {', '.join(recipe_names())})")
