"""The experiment grid of ``koemo reproduce``: which models are trained on which text under which
protocol, and what each is tested on. Everything here is names; nothing is loaded or trained.

The grid (``eval`` section of a recipe, :class:`koemo.config.EvalConfig`; the paper's is
``koemo/recipes/paper-grid.yaml``):

- **Table 3** (``eval.table3``): each model trained and tested on human transcripts (``gold``);
  model specs are ``fusion@speech+text``, ``text-only@TEXT`` or ``audio-only@SPEECH``.
- **Table 4** (``eval.table4_fusions`` x ``eval.asr_sources``): each fusion, on the recipe's
  encoders, trained on ASR text (``asr:C``) and with consistency regularization (``cr:C``),
  tested on ASR text ``C``; compared with the same fusion's Table 3 row (trained and tested on
  human text). The Table 3 models are also tested on every ASR source ("trained on human text,
  tested on ASR text": the naive deployment).
- **ASR table**: CER/WER/sWER of every ASR source against the human transcripts.
- **SNR curve** (``eval.snr_values``): ``eval.snr_backend`` under ``eval.snr_noise`` at each SNR;
  ``eval.snr_fusion`` trained on that ASR text vs. with CR, with the CER on a second axis. Noise is
  added to the recogniser's input only; the emotion model's audio branch hears the clean clip, so
  the curve isolates the effect of ASR errors, as the paper does.
- **Text-neutral** (``eval.text_neutral``): every Table 3 and Table 4 job once more under the
  ``text-neutral`` protocol (train on other speakers and sentences, test on the clips whose
  sentence is read in several emotions), and the main protocol's predictions of those clips
  scored apart: what a model does when the words carry no emotion.
- **Protocols** (``eval.protocols`` x ``eval.protocol_models``): the same models under other
  split protocols (``speaker``: sentences shared with training; ``stratified``: the paper's 8:1:1,
  speakers and sentences shared) against the main protocol (``split.protocol``), to measure how
  much sentence and speaker overlap inflate the scores.

Every (model, training text, protocol) is trained for ``eval.seeds`` seeds; seed ``s`` redraws
the folds (``split.seed = s``) and the initialisation (``train.seed = s``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from koemo.config import Recipe
from koemo.errors import KoemoError
from koemo.sources import GRAMMAR, TextSource, TrainingText

TEXT_NEUTRAL = "text-neutral"

# ---------------------------------------------------------------------------------------------
# names


@dataclass(frozen=True)
class ModelSpec:
    """A fusion and the encoders it reads (``None`` for a modality it ignores)."""

    fusion: str
    speech: str | None
    text: str | None

    @property
    def key(self) -> str:
        from koemo.training.run import model_key

        return model_key(self.fusion, self.speech, self.text)

    @property
    def encoders(self) -> str:
        return "+".join(x for x in (self.speech, self.text) if x)


def parse_model(spec: str, default_speech: str = "", default_text: str = "") -> ModelSpec:
    """``fusion@speech+text``, ``text-only@TEXT``, ``audio-only@SPEECH``, or a bare fusion name
    (the recipe's encoders)."""
    spec = spec.strip()
    fusion, _, encoders = spec.partition("@")
    if not fusion:
        raise KoemoError(f"model spec {spec!r}: expected fusion@speech+text")
    if fusion == "text-only":
        return ModelSpec(fusion, None, encoders or default_text)
    if fusion == "audio-only":
        return ModelSpec(fusion, encoders or default_speech, None)
    if not encoders:
        return ModelSpec(fusion, default_speech, default_text)
    speech, plus, text = encoders.partition("+")
    if not plus or not speech or not text:
        raise KoemoError(f"model spec {spec!r}: a fusion needs both encoders, fusion@speech+text")
    return ModelSpec(fusion, speech, text)


@dataclass(frozen=True)
class Job:
    """One model trained on one text under one protocol (for every seed and fold)."""

    model: ModelSpec
    train_text: str  # gold | asr:C | cr:asr:C
    protocol: str

    @property
    def slug(self) -> str:
        from koemo.training.run import job_slug

        return job_slug(self.model.key, self.train_text, self.protocol)

    @property
    def stt(self) -> str | None:
        """The recogniser's text the job trains on (asr and cr jobs), else None."""
        stt = TrainingText.parse(self.train_text).stt
        return None if stt is None else str(stt)


@dataclass
class Plan:
    recipe: Recipe
    main_protocol: str
    seeds: list[int]
    asr_sources: list[str]  # Table 4 conditions
    snr_sources: list[tuple[float | None, str]]  # (snr or None for clean, source)
    table3: list[ModelSpec]
    table4: list[ModelSpec]
    snr_model: ModelSpec | None
    protocol_models: list[ModelSpec]
    protocols: list[str]
    jobs: dict[Job, set[str]] = field(default_factory=dict)  # job -> test sources

    @property
    def all_asr_sources(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.asr_sources + [s for _, s in self.snr_sources]:
            seen[s] = None
        return list(seen)

    def speech_encoders(self) -> list[str]:
        return sorted({j.model.speech for j in self.jobs if j.model.speech})

    def text_needs(self) -> dict[str, set[str]]:
        """text encoder -> text sources it must encode."""
        out: dict[str, set[str]] = defaultdict(set)
        for job, tests in self.jobs.items():
            if job.model.text:
                out[job.model.text] |= sources_of(job, tests)
        return dict(out)


def sources_of(job: Job, tests: set[str]) -> set[str]:
    """Every text source a job reads: training, validation and test."""
    return set(tests) | set(TrainingText.parse(job.train_text).train_sources)


def make_plan(recipe: Recipe) -> Plan:
    """The jobs of the grid the recipe's ``eval`` section describes (see the module docstring)."""
    ev, enc = recipe.eval, recipe.encoders
    main = recipe.split.protocol
    seeds = list(range(ev.seeds))
    if not seeds:
        raise KoemoError("eval.seeds must be at least 1")
    for s in ev.asr_sources:
        if TextSource.parse(s).is_gold:
            raise KoemoError(f"eval.asr_sources: {s!r} is not an ASR source ({GRAMMAR})")
    snr_sources: list[tuple[float | None, str]] = []
    if ev.snr_values:
        from koemo.asr.noise import text_source  # checks the noise kind

        snr_sources = [(None, str(TextSource.asr(ev.snr_backend)))] + [
            (float(v), text_source(ev.snr_backend, ev.snr_noise, float(v))) for v in ev.snr_values]
    table3 = [parse_model(m, enc.speech, enc.text) for m in ev.table3]
    table4 = [parse_model(f, enc.speech, enc.text) for f in ev.table4_fusions]
    snr_model = parse_model(ev.snr_fusion, enc.speech, enc.text) if snr_sources else None
    protocol_models = [parse_model(m, enc.speech, enc.text) for m in ev.protocol_models]
    plan = Plan(recipe, main, seeds, list(ev.asr_sources), snr_sources, table3, table4, snr_model,
                protocol_models, [p for p in ev.protocols if p != main])
    all_asr = plan.all_asr_sources

    def add(job: Job, tests: Sequence[str]) -> None:
        plan.jobs.setdefault(job, set()).update(tests)

    for m in table3:
        # human-trained models are also tested on every ASR source (the naive deployment)
        add(Job(m, "gold", main), ["gold"] + (all_asr if m.text else []))
    for m in table4:
        add(Job(m, "gold", main), ["gold"] + all_asr)
        for s in plan.asr_sources:
            add(Job(m, s, main), [s])
            add(Job(m, f"cr:{s}", main), [s])
    if snr_model is not None:
        add(Job(snr_model, "gold", main), ["gold"] + all_asr)
        for _, s in snr_sources:
            add(Job(snr_model, s, main), [s])
            add(Job(snr_model, f"cr:{s}", main), [s])
    for p in plan.protocols:
        for m in protocol_models:
            add(Job(m, "gold", p), ["gold"])
    for m in protocol_models:
        add(Job(m, "gold", main), ["gold"])
    if ev.text_neutral and main != TEXT_NEUTRAL:
        # the same rows on speakers whose sentences are read in every emotion (words carry no label)
        for m in table3:
            add(Job(m, "gold", TEXT_NEUTRAL), ["gold"] + (all_asr if m.text else []))
        for m in table4:
            for s in plan.asr_sources:
                add(Job(m, s, TEXT_NEUTRAL), [s])
                add(Job(m, f"cr:{s}", TEXT_NEUTRAL), [s])
    return plan


