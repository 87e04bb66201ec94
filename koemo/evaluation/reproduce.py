"""``koemo reproduce``: the paper's experiments on a recipe's data as one resumable command.

The grid (``eval`` section of the recipe, :class:`koemo.config.EvalConfig`):

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
- **Protocols** (``eval.protocols`` x ``eval.protocol_models``): the same models under other
  split protocols (``speaker``: sentences shared with training; ``stratified``: the paper's 8:1:1,
  speakers and sentences shared) against the main protocol (``split.protocol``), to measure how
  much sentence and speaker overlap inflate the scores.

Every (model, training text, protocol) is trained for ``eval.seeds`` seeds; seed ``s`` redraws
the folds (``split.seed = s``) and the initialisation (``train.seed = s``). In the
cross-validation protocols every clip is tested once per seed; predictions are pooled per seed,
scored, and mean ± std taken over seeds (:mod:`koemo.evaluation.metrics`).

Caching and resuming: transcripts (ASR cache), features (feature store) and fold bundles
(``<cache>/reproduce/<recipe>/...``, one per fold and seed, rewritten atomically after each
epoch) are all reused; the trainer skips a fold whose complete bundle has the same fingerprint
(config, fold and data), so a re-run only computes what changed, and a killed run resumes at the
epoch it was in. Results go to ``results/`` (``results.json``, ``REPORT.md``/``.html``,
``figures/``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from koemo.config import Recipe
from koemo.errors import KoemoError

log = logging.getLogger("koemo")

#: reduced grid for ``--fast`` (``make demo``): 2 seeds, a 2 x 2 speaker-sentence grid (4 folds
#: per seed instead of 9), text-only and shallow fusion on human text, shallow trained on
#: whisper-base text vs. with CR, the speaker-only comparison, no SNR curve. The audio-only and
#: attention models are left out: at hidden 768 they take minutes per fold on a 2-core CPU.
FAST_OVERRIDES = [
    "eval.seeds=2",
    "split.folds=2",
    "eval.table3=[text-only@embeddinggemma-300m, shallow@whisper-base-encoder+embeddinggemma-300m]",
    "eval.table4_fusions=[shallow]",
    "eval.asr_sources=[asr:whisper-base]",
    "eval.snr_values=[]",
    "eval.protocols=[speaker]",
    "eval.protocol_models=[shallow@whisper-base-encoder+embeddinggemma-300m]",
]

#: the paper's numbers (weighted F1) for the rows that correspond to ours, for the report
PAPER_TABLE3 = {
    ("text-only", "fasttext-ko"): 0.4116,
    ("text-only", "embeddinggemma-300m"): 0.4463,  # paper: HanBERT
    ("audio-only", "mfcc"): 0.3539,
    ("audio-only", "whisper-base-encoder"): 0.4326,  # paper: wav2vec 2.0
    ("shallow", "mfcc+fasttext-ko"): 0.4364,
    ("shallow", "whisper-base-encoder+embeddinggemma-300m"): 0.4952,
    ("fusion-transformer", "whisper-base-encoder+embeddinggemma-300m"): 0.4906,
    ("mult", "whisper-base-encoder+embeddinggemma-300m"): 0.4893,
}
#: the paper's Table 4 (Google STT, the better of its two recognisers): ASR-trained / CR
PAPER_TABLE4 = {"shallow": (0.4220, 0.4674), "fusion-transformer": (0.4313, 0.4601), "mult": (0.4240, 0.4670)}


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
        if self.fusion == "text-only":
            return f"text-only@{self.text}"
        if self.fusion == "audio-only":
            return f"audio-only@{self.speech}"
        return f"{self.fusion}@{self.speech}+{self.text}"

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


_SOURCE = re.compile(r"asr:(?P<backend>[^@]+)(?:@(?P<kind>[a-z]+)-(?P<snr>-?[\d.]+)db(?:-seed(?P<seed>\d+))?)?")


def parse_source(source: str) -> tuple[str, str | None, float | None, int]:
    """``asr:<backend>[@<noise>-<snr>db[-seed<N>]]`` -> (backend, noise, snr, seed); the inverse
    of :func:`koemo.asr.noise.text_source`."""
    m = _SOURCE.fullmatch(source.strip())
    if not m:
        raise KoemoError(f"ASR source {source!r}: expected asr:<backend> or asr:<backend>@<noise>-<snr>db")
    snr = float(m["snr"]) if m["snr"] is not None else None
    return m["backend"], m["kind"], snr, int(m["seed"] or 0)


@dataclass(frozen=True)
class Job:
    """One model trained on one text under one protocol (for every seed and fold)."""

    model: ModelSpec
    train_text: str  # gold | asr:C | cr:asr:C
    protocol: str

    @property
    def slug(self) -> str:
        raw = f"{self.model.key}.{self.train_text}.{self.protocol}"
        return re.sub(r"[^A-Za-z0-9._@+-]+", "_", raw)

    @property
    def stt(self) -> str | None:
        if self.train_text.startswith("cr:"):
            return self.train_text[3:]
        return self.train_text if self.train_text.startswith("asr:") else None


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
    s = set(tests)
    s.add("gold" if job.stt is None or job.train_text.startswith("cr:") else job.stt)
    if job.stt:
        s.add(job.stt)
    return s


def make_plan(recipe: Recipe) -> Plan:
    """The jobs of the grid the recipe's ``eval`` section describes (see the module docstring)."""
    ev, enc = recipe.eval, recipe.encoders
    main = recipe.split.protocol
    seeds = list(range(ev.seeds))
    if not seeds:
        raise KoemoError("eval.seeds must be at least 1")
    for s in ev.asr_sources:
        parse_source(s)
    snr_sources: list[tuple[float | None, str]] = []
    if ev.snr_values:
        from koemo.asr.noise import text_source

        snr_sources = [(None, f"asr:{ev.snr_backend}")] + [
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
    return plan


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Inputs:
    """Everything loaded once: utterances, features per encoder/source, labels."""

    utts: list
    labels: list[str]
    speech: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    text: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    asr_rows: list[dict] = field(default_factory=list)
    #: "speech"/"text" -> encoder name -> what a bundle records (id with version and checksum, dim)
    encoder_meta: dict[str, dict[str, dict]] = field(default_factory=lambda: {"speech": {}, "text": {}})


def _dummy(ids: Sequence[str]) -> dict[str, np.ndarray]:
    """A modality the model ignores: one zero frame per utterance (the trainer wants both)."""
    z = np.zeros((1, 1), dtype=np.float16)
    return {u: z for u in ids}


def feature_data(job: Job, tests: set[str], inputs: Inputs):
    from koemo.training.data import FeatureData

    ids = [u.id for u in inputs.utts]
    audio = inputs.speech[job.model.speech] if job.model.speech else _dummy(ids)
    text = {s: (inputs.text[(job.model.text, s)] if job.model.text else _dummy(ids))
            for s in sorted(sources_of(job, tests))}
    return FeatureData(audio, text, {u.id: u.label for u in inputs.utts}, inputs.labels)


def job_recipe(plan: Plan, job: Job, seed: int) -> Recipe:
    r = plan.recipe
    return replace(
        r,
        split=replace(r.split, protocol=job.protocol, seed=seed),
        model=replace(r.model, fusion=job.model.fusion),
        encoders=replace(r.encoders, speech=job.model.speech or "none", text=job.model.text or "none"),
        train=replace(r.train, text=job.train_text, seed=seed, checkpoint_every=r.eval.checkpoint_every),
    )


def runs_root(recipe: Recipe) -> Path:
    """Where the fold bundles go: ``eval.runs_dir``, else ``<cache>/reproduce/<recipe name>``."""
    from koemo.paths import cache_root

    if recipe.eval.runs_dir:
        return Path(recipe.eval.runs_dir).expanduser()
    return cache_root(recipe.cache_dir) / "reproduce" / recipe.name


def fold_dir(recipe: Recipe, job: Job, seed: int, fold: str) -> Path:
    return runs_root(recipe) / job.slug / f"seed{seed}" / fold


def prepare_inputs(plan: Plan, data_dir: str | None = None, progress: bool = True) -> tuple[Inputs, list[dict]]:
    """Manifest, transcripts (every ASR source), the ASR table, and features (every encoder)."""
    from koemo.data.labels import resolve_label_set
    from koemo.data.manifest import read_manifest
    from koemo.data.prepare import load_or_prepare

    recipe = plan.recipe
    manifest, utts = load_or_prepare(recipe, data_dir)
    asr_rows: list[dict] = []
    if plan.all_asr_sources:
        from koemo.asr.evaluate import evaluate_sources
        from koemo.asr.transcribe import transcribe_manifest

        for source in plan.all_asr_sources:
            backend, noise, snr, nseed = parse_source(source)
            log.info("transcripts %s", source)
            report = transcribe_manifest(manifest, backend, noise, snr, nseed, recipe.asr.jobs, progress=progress)
            if len(report.skips):
                log.warning("%s: %d clips could not be transcribed", source, len(report.skips))
        utts = read_manifest(manifest)
        for source, missing, sc in evaluate_sources(utts, plan.all_asr_sources):
            asr_rows.append({"condition": source, "cer": sc.cer, "wer": sc.wer, "swer": sc.swer,
                             "n": sc.utterances, "missing": missing, "empty": sc.empty_hypotheses})
        missing_any = {s for s in plan.all_asr_sources for u in utts if s not in u.transcripts}
        if missing_any:
            # A clip without a transcript is recognised as silence in service: empty text.
            for u in utts:
                for s in missing_any:
                    u.transcripts.setdefault(s, "")
    labels = list(resolve_label_set(recipe.data.label_set))
    inputs = Inputs(utts, labels, asr_rows=asr_rows)
    _ensure_fasttext(plan, utts, data_dir)
    from koemo.encoders import get_speech_encoder, get_text_encoder
    from koemo.training.features import store_for

    store = store_for(recipe)
    for name in plan.speech_encoders():
        inputs.speech[name] = _complete(store.speech(name, utts, progress=progress), utts, f"speech features {name}")
        e = get_speech_encoder(name)
        inputs.encoder_meta["speech"][name] = {"name": name, "id": e.id, "dim": e.dim, "finetuned": False}
    for name, sources in sorted(plan.text_needs().items()):
        for s in sorted(sources):
            inputs.text[(name, s)] = _complete(store.text(name, utts, s, progress=progress), utts,
                                               f"text features {name} [{s}]")
        e = get_text_encoder(name)
        inputs.encoder_meta["text"][name] = {"name": name, "id": e.id, "dim": e.dim, "finetuned": False,
                                             "sentence_vector": bool(getattr(e, "sentence_vector", False))}
    return inputs, asr_rows


#: format tag of an inputs pack (:func:`save_inputs`)
PACK_FORMAT = "koemo-inputs-1"


def save_inputs(inputs: Inputs, path: str | Path) -> Path:
    """Write everything the grid's training reads (utterances with transcripts, features, the ASR
    table, encoder ids) to one ``.npz``, so the training grid can run on another machine (a GPU
    box) with neither the ASR nor the encoders' weights there (``--inputs``). Identical arrays
    (the same sentence read by every speaker) are stored once."""
    import hashlib
    import io

    from koemo.paths import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}

    def put(where: str, a: Any) -> str:
        if not isinstance(a, np.ndarray):
            raise KoemoError(f"{where}: not a feature array ({type(a).__name__}); only frozen features can be packed")
        a = np.ascontiguousarray(a)
        h = hashlib.sha1(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()
        if h not in names:
            names[h] = f"a{len(names)}"
            arrays[names[h]] = a
        return names[h]

    index = {
        "format": PACK_FORMAT,
        "labels": inputs.labels,
        "utts": [u.to_dict() for u in inputs.utts],
        "asr_rows": inputs.asr_rows,
        "encoder_meta": inputs.encoder_meta,
        "speech": {name: {u: put(f"{u} [{name}]", a) for u, a in t.items()} for name, t in inputs.speech.items()},
        "text": [{"encoder": name, "source": source, "arrays": {u: put(f"{u} [{name} {source}]", a)
                                                                  for u, a in t.items()}}
                 for (name, source), t in inputs.text.items()],
    }
    arrays["index"] = np.frombuffer(json.dumps(index, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_inputs(path: str | Path, plan: Plan) -> Inputs:
    """Read a pack written by :func:`save_inputs` and check it holds what ``plan`` needs."""
    import zipfile

    from koemo.data.manifest import Utterance

    path = Path(path)
    if not path.is_file():
        raise KoemoError(f"{path}: no such inputs pack (write one with: koemo reproduce --save-inputs {path})")
    try:
        with np.load(path, allow_pickle=False) as z:
            index = json.loads(bytes(z["index"]).decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != "index"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise KoemoError(f"{path}: not a readable koemo inputs pack ({e})") from None
    if index.get("format") != PACK_FORMAT:
        raise KoemoError(f"{path}: inputs pack format {index.get('format')!r}, this koemo reads {PACK_FORMAT}")
    from koemo.data.labels import resolve_label_set

    labels = list(resolve_label_set(plan.recipe.data.label_set))
    if index["labels"] != labels:
        raise KoemoError(f"{path}: packed labels {index['labels']} differ from the recipe's {labels}")
    inputs = Inputs([Utterance(**d) for d in index["utts"]], labels, asr_rows=index["asr_rows"],
                    encoder_meta=index["encoder_meta"])
    inputs.speech = {name: {u: arrays[k] for u, k in t.items()} for name, t in index["speech"].items()}
    inputs.text = {(t["encoder"], t["source"]): {u: arrays[k] for u, k in t["arrays"].items()} for t in index["text"]}
    for name in plan.speech_encoders():
        if name not in inputs.speech:
            raise KoemoError(f"{path}: no speech features '{name}'; re-export the pack with this grid")
    for name, sources in plan.text_needs().items():
        for s in sources:
            if (name, s) not in inputs.text:
                raise KoemoError(f"{path}: no text features '{name}' [{s}]; re-export the pack with this grid")
    for kind, names in (("speech", plan.speech_encoders()), ("text", list(plan.text_needs()))):
        for name in names:
            if name not in inputs.encoder_meta.get(kind, {}):
                raise KoemoError(f"{path}: no id recorded for {kind} encoder '{name}'")
    for table_name, table in [(f"speech {n}", t) for n, t in inputs.speech.items()] + \
            [(f"text {n} [{s}]", t) for (n, s), t in inputs.text.items()]:
        _complete(table, inputs.utts, f"{table_name} features in {path}")
    return inputs


def _complete(table: dict, utts, what: str) -> dict:
    missing = [u.id for u in utts if u.id not in table]
    if missing:
        raise KoemoError(f"{missing[0]}: no {what} ({len(missing)} utterances missing)")
    return table


def _ensure_fasttext(plan: Plan, utts, data_dir: str | None) -> None:
    """Train the fasttext-ko baseline once, leaving out this dataset's sentences, if it is used."""
    if "fasttext-ko" not in plan.text_needs():
        return
    from koemo.encoders.fasttext import META, fasttext_dir, train_fasttext

    if (fasttext_dir() / META).is_file():
        return
    from koemo.data.text_corpora import DEFAULT_SUBDIR
    from koemo.paths import data_dir as data_root

    log.info("training fasttext-ko (once) on %s", data_root(data_dir) / DEFAULT_SUBDIR)
    train_fasttext(data_root(data_dir) / DEFAULT_SUBDIR, exclude_texts={u.text for u in utts if u.text.strip()})


def folds_for(plan: Plan, utts, protocol: str, seed: int):
    from koemo.data.splits import make_folds

    s = plan.recipe.split
    return make_folds(utts, protocol, s.folds, seed, tuple(s.ratios))


def all_folds(plan: Plan, inputs: Inputs) -> dict[tuple[str, int], list]:
    """The folds of every (protocol, seed) the grid uses, drawn once."""
    return {(p, s): folds_for(plan, inputs.utts, p, s) for p in {j.protocol for j in plan.jobs} for s in plan.seeds}


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``I/N`` (0-based I) -> (I, N)."""
    if not shard:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise KoemoError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(m[1]), int(m[2])


def run_jobs(plan: Plan, inputs: Inputs, progress: bool = True,
             on_fold: Callable[[Job, int, str], None] | None = None,
             shard: tuple[int, int] | None = None, only: str | None = None) -> dict[tuple[Job, str], list]:
    """Train (or reuse) every fold of every job and seed; return pooled test predictions keyed by
    (job, test source), each prediction carrying its seed.

    A fold whose finished bundle has the same fingerprint is read, not retrained. With ``shard``
    ``(i, n)`` only every n-th (job, seed) unit, starting at i, is trained and nothing is returned:
    n processes (or machines sharing the cache) split the grid, then a run without a shard reads
    their bundles and writes the report. ``only`` (a regular expression) trains just the jobs
    whose slug it matches (``koemo reproduce --only``: the most wanted rows first) and likewise
    returns nothing."""
    from tqdm.auto import tqdm

    from koemo.training.trainer import bundle_done, plan_fold, train_fold

    folds_cache = all_folds(plan, inputs)
    units = [(job, tests, seed) for job, tests in sorted(plan.jobs.items(), key=lambda kv: kv[0].slug)
             for seed in plan.seeds]
    if only is not None:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise KoemoError(f"--only {only!r}: not a regular expression ({e})") from None
        units = [u for u in units if pattern.search(u[0].slug)]
        if not units:
            raise KoemoError(f"--only {only!r} matches no job of the grid; its jobs: "
                             + ", ".join(sorted({j.slug for j in plan.jobs})))
    if shard is not None:
        units = units[shard[0]::shard[1]]
    total = sum(len(folds_cache[(job.protocol, seed)]) for job, _, seed in units)
    preds: dict[tuple[Job, str], list] = defaultdict(list)
    partial = shard is not None or only is not None
    bar = tqdm(total=total, desc="reproduce" if shard is None else f"shard {shard[0]}/{shard[1]}",
               unit="fold", disable=not progress)
    t0, trained = time.time(), 0
    data_job, data = None, None  # one job's tables at a time (units come sorted by job)
    try:
        for job, tests, seed in units:
            if job != data_job:
                data_job, data = job, feature_data(job, tests, inputs)
            enc_meta = _encoder_meta(job.model, inputs)
            recipe = job_recipe(plan, job, seed)
            for fold in folds_cache[(job.protocol, seed)]:
                bar.set_postfix_str(f"{job.slug} seed{seed} {fold.name}"[-60:])
                out = fold_dir(plan.recipe, job, seed, fold.name)
                fplan = plan_fold(recipe, fold, data)
                if not bundle_done(out, fplan.fingerprint):
                    result = train_fold(recipe, fold, data, out_dir=out, encoders=enc_meta, progress=False,
                                        fold_plan=fplan)
                    trained += 1
                    log.debug("%s seed %d %s: test %s", job.slug, seed, fold.name,
                              {k: round(v["weighted_f1"], 4) for k, v in result.test.items()})
                if not partial:
                    for source in tests:
                        preds[(job, source)] += _read_fold_predictions(out, source, seed)
                if on_fold:
                    on_fold(job, seed, fold.name)
                bar.update(1)
    finally:
        bar.close()
    log.info("%d folds (%d trained, the rest read from finished bundles) in %.0f s", total, trained,
             time.time() - t0)
    return preds


def training_seconds(plan: Plan, inputs: Inputs) -> float:
    """Seconds spent training the grid's folds, summed from their bundles' epoch times: what the
    report states even when shards or earlier runs did the training (the report pass only reads)."""
    from koemo.training.bundle import read_meta

    total = 0.0
    folds = all_folds(plan, inputs)
    for job in plan.jobs:
        for seed in plan.seeds:
            for fold in folds[(job.protocol, seed)]:
                history = read_meta(fold_dir(plan.recipe, job, seed, fold.name)).get("history", [])
                total += sum(float(h.get("seconds", 0.0)) for h in history)
    return total


def _encoder_meta(model: ModelSpec, inputs: Inputs) -> dict:
    """Encoder names, ids (version and weights checksum) and dims, for the bundles."""
    meta: dict[str, Any] = {}
    if model.speech:
        meta["speech"] = inputs.encoder_meta["speech"][model.speech]
    if model.text:
        meta["text"] = inputs.encoder_meta["text"][model.text]
    return meta


def _read_fold_predictions(bundle: Path, source: str, seed: int) -> list:
    from koemo.evaluation.evaluate import bundle_predictions

    got = bundle_predictions(bundle, source)
    if got is None:
        raise KoemoError(f"{bundle}: the trainer wrote no '{source}' test predictions")
    for p in got:
        p.seed = seed
    return got


# ---------------------------------------------------------------------------------------------
# results


def _summary(preds: list, labels: list[str]) -> dict[str, Any]:
    from koemo.evaluation.metrics import aggregate

    agg = aggregate(preds, labels)
    return {"mean": agg.mean, "std": agg.std, "seeds": agg.seeds, "confusion": agg.confusion.tolist(),
            "per_class_f1": agg.per_class_f1_mean, "per_class_recall": agg.per_class_recall_mean}


def modality_shares(plan: Plan, inputs: Inputs, job: Job, source: str) -> dict:
    """Grad-CAM shares at the fusion input for every fold bundle of ``job`` on its test clips read
    with ``source`` text, averaged per true label over all folds and seeds."""
    import torch

    from koemo.evaluation.gradcam import ModalityContribution, per_label_means, modality_contribution
    from koemo.training.bundle import load_bundle

    data = feature_data(job, plan.jobs[job], inputs)
    all_shares, all_true = [], []
    for seed in plan.seeds:
        for fold in folds_for(plan, inputs.utts, job.protocol, seed):
            b = load_bundle(fold_dir(plan.recipe, job, seed, fold.name))
            batches = []
            for i in range(0, len(fold.test), 32):
                ids = fold.test[i:i + 32]
                t = data.batch([(u, source) for u in ids])
                batches.append((t["audio"], t["audio_mask"], t["text"], t["text_mask"], data.y(ids)))
            with torch.no_grad():
                res: ModalityContribution = modality_contribution(b.model, batches, inputs.labels, "pred", at="embed")
            all_shares.append(res.shares)
            all_true.append(res.true)
    per, overall, undefined = per_label_means(np.concatenate(all_shares), np.concatenate(all_true), inputs.labels)
    return {"per_label": per, "overall": overall, "undefined": undefined}


def build_results(plan: Plan, inputs: Inputs, preds: dict, asr_rows: list[dict]) -> dict:
    labels = inputs.labels
    main = plan.main_protocol
    summ: dict[tuple[Job, str], dict] = {k: _summary(v, labels) for k, v in preds.items()}
    res: dict[str, Any] = {"labels": labels, "table3": [], "table4": [], "asr": asr_rows, "snr": [],
                           "protocols": [], "naive": []}
    for m in plan.table3:
        s = summ[(Job(m, "gold", main), "gold")]
        res["table3"].append({"model": m.fusion, "speech": m.speech, "text": m.text, "key": m.key,
                              "mean": s["mean"], "std": s["std"], "per_class_f1": s["per_class_f1"],
                              "paper": PAPER_TABLE3.get((m.fusion, m.encoders))})
    cer = {r["condition"]: r["cer"] for r in asr_rows}
    for source in plan.asr_sources:
        for m in plan.table4:
            gold = summ[(Job(m, "gold", main), "gold")]
            naive = summ[(Job(m, "gold", main), source)]
            a = summ[(Job(m, source, main), source)]
            c = summ[(Job(m, f"cr:{source}", main), source)]
            paper = PAPER_TABLE4.get(m.fusion)
            res["table4"].append({
                "asr": source[4:], "source": source, "model": m.fusion, "key": m.key, "cer": cer.get(source),
                "gold": {"mean": gold["mean"]["weighted_f1"], "std": gold["std"]["weighted_f1"]},
                "gold_on_asr": {"mean": naive["mean"]["weighted_f1"], "std": naive["std"]["weighted_f1"]},
                "asr_trained": {"mean": a["mean"]["weighted_f1"], "std": a["std"]["weighted_f1"]},
                "cr": {"mean": c["mean"]["weighted_f1"], "std": c["std"]["weighted_f1"]},
                "asr_trained_ua": a["mean"]["unweighted_accuracy"], "cr_ua": c["mean"]["unweighted_accuracy"],
                "paper": {"asr_trained": paper[0], "cr": paper[1]} if paper else None,
            })
    if plan.snr_model is not None:
        m = plan.snr_model
        for snr, source in plan.snr_sources:
            point: dict[str, Any] = {"snr": snr, "source": source, "cer": cer.get(source)}
            for key, train in (("asr", source), ("cr", f"cr:{source}"), ("gold", "gold")):
                s = summ.get((Job(m, train, main), source))
                if s:
                    point[key] = {"mean": s["mean"]["weighted_f1"], "std": s["std"]["weighted_f1"]}
            res["snr"].append(point)
        g = summ.get((Job(m, "gold", main), "gold"))
        res["snr_reference"] = g["mean"]["weighted_f1"] if g else None
    for p in [main] + plan.protocols:
        for m in plan.protocol_models:
            s = summ[(Job(m, "gold", p), "gold")]
            res["protocols"].append({"protocol": p, "model": m.key, "mean": s["mean"], "std": s["std"]})
    res["_summaries"] = summ
    return res


def _figures(plan: Plan, inputs: Inputs, res: dict, out_dir: Path, gradcam: bool = True) -> list[dict]:
    from koemo.evaluation.plots import plot_confusions, plot_modality, plot_snr_curve

    figs = []
    labels = inputs.labels
    main = plan.main_protocol
    summ = res["_summaries"]
    fig_dir = out_dir / "figures"
    if plan.table4 and plan.asr_sources:
        source = plan.recipe.eval.text if plan.recipe.eval.text in plan.asr_sources else plan.asr_sources[0]
        # every Table 4 fusion gets its figures; the first keeps the plain file names
        for k, m in enumerate(plan.table4):
            tag = "" if k == 0 else "-" + re.sub(r"[^a-z0-9]+", "-", m.fusion.lower()).strip("-")
            panels = [("human text (trained on human text)", summ[(Job(m, "gold", main), "gold")]["confusion"]),
                      (f"{source} (trained on {source})", summ[(Job(m, source, main), source)]["confusion"]),
                      (f"{source} + consistency reg.", summ[(Job(m, f"cr:{source}", main), source)]["confusion"])]
            plot_confusions(panels, labels, fig_dir / f"confusion{tag}.png",
                            suptitle=f"{m.key}: confusion matrices, all seeds (rows: true label)")
            figs.append({"path": f"figures/confusion{tag}.png",
                         "caption": f"Figure 7 analogue: {m.fusion} on human text, on {source} text, and with CR "
                                    "(row-normalised; counts summed over seeds)"})
            if not gradcam:
                continue
            shares = {}
            for name, job, src in (("human text", Job(m, "gold", main), "gold"),
                                   (f"CR on {source}", Job(m, f"cr:{source}", main), source)):
                shares[name] = modality_shares(plan, inputs, job, src)
                safe = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                plot_modality(shares[name]["per_label"], fig_dir / f"modality{tag}-{safe}.png", labels=labels,
                              title=f"{m.fusion}, {name}: share of the decision (gradient x activation)")
                figs.append({"path": f"figures/modality{tag}-{safe}.png",
                             "caption": f"Figure 6 analogue: audio vs. text share per true label, {m.fusion} "
                                        f"{name} (fusion input, predicted class)"})
            if k == 0:
                res["modality"] = shares
            res.setdefault("modality_by_fusion", {})[m.fusion] = shares
    if res.get("snr"):
        plot_snr_curve(res["snr"], fig_dir / "snr.png",
                       series=(("asr", "trained on ASR text"), ("cr", "with consistency regularization"),
                               ("gold", "trained on human text")),
                       reference=res.get("snr_reference"),
                       title=f"{plan.snr_model.fusion}: weighted F1 vs. SNR ({plan.recipe.eval.snr_noise} noise, "
                             f"{plan.recipe.eval.snr_backend})")
        figs.append({"path": "figures/snr.png", "caption": "Weighted F1 against SNR, with the ASR CER (right axis)"})
    return figs


def auto_commentary(res: dict, plan: Plan) -> str:
    """Facts computed from the numbers (the human commentary goes in results/COMMENTARY.md)."""
    lines = []
    if res["table3"]:
        best = max(res["table3"], key=lambda r: r["mean"]["weighted_f1"])
        lines.append(f"- Best Table 3 model: {best['key']} at {best['mean']['weighted_f1']:.4f} weighted F1 "
                     f"(paper's best: 0.4952, shallow fusion).")
    if res["table4"]:
        drops = [r["asr_trained"]["mean"] - r["gold"]["mean"] for r in res["table4"]]
        crs = [r["cr"]["mean"] - r["gold"]["mean"] for r in res["table4"]]
        rec = [r["cr"]["mean"] - r["asr_trained"]["mean"] for r in res["table4"]]
        wins = sum(x > 0 for x in rec)
        lines.append(f"- Against the same model on human text, training and testing on ASR text changes weighted F1 "
                     f"by {100 * np.mean(drops):+.1f} pt on average (paper: -5.9 to -8.3 pt), with CR by "
                     f"{100 * np.mean(crs):+.1f} pt; CR recovers {100 * np.mean(rec):+.1f} pt on average and beats "
                     f"ASR-trained in {wins} of {len(rec)} rows (paper: +2.4 to +4.6 pt, 6 of 6).")
    main = plan.main_protocol
    by = defaultdict(dict)
    for r in res["protocols"]:
        by[r["model"]][r["protocol"]] = r["mean"]["weighted_f1"]
    for model, vals in by.items():
        if main in vals:
            other = ", ".join(f"{p} {100 * (v - vals[main]):+.1f} pt" for p, v in vals.items() if p != main)
            if other:
                lines.append(f"- Leakage, {model}: {main} {vals[main]:.4f}; {other}.")
    return "\n".join(lines)


def reproduce(recipe: Recipe, out_dir: str | Path = "results", data_dir: str | None = None,
              progress: bool = True, command: str = "", gradcam: bool = True,
              inputs_path: str | Path | None = None, save_inputs_path: str | Path | None = None,
              shard: str | None = None, prepare_only: bool = False, only: str | None = None) -> dict:
    """Run the grid (see the module docstring), write ``results.json``, figures and the report.

    ``save_inputs_path`` writes the prepared inputs to a pack; ``inputs_path`` reads one instead
    of transcribing and encoding (no ASR or encoder weights needed); ``shard`` ``"I/N"`` trains
    one share of the grid and writes no report (see :func:`run_jobs`), as does ``only`` (a regular
    expression: train just the jobs whose slug matches); ``prepare_only`` stops
    after the transcripts and features (and the pack)."""
    from koemo.evaluation.report import write_report
    from koemo.paths import atomic_write_text

    t0 = time.time()
    out_dir = Path(out_dir)
    plan = make_plan(recipe)
    shard_of = parse_shard(shard)
    log.info("reproduce: %d jobs x %d seeds, main protocol %s", len(plan.jobs), len(plan.seeds), plan.main_protocol)
    if inputs_path:
        inputs = load_inputs(inputs_path, plan)
        asr_rows = inputs.asr_rows
    else:
        inputs, asr_rows = prepare_inputs(plan, data_dir, progress)
    if save_inputs_path:
        save_inputs(inputs, save_inputs_path)
        log.info("inputs pack written: %s", save_inputs_path)
    if prepare_only:
        return {"prepared": True, "meta": {"wall_time_s": round(time.time() - t0, 1)}}
    preds = run_jobs(plan, inputs, progress, shard=shard_of, only=only)
    if shard_of is not None or only is not None:
        return {"shard": shard, "only": only, "meta": {"wall_time_s": round(time.time() - t0, 1)}}
    res = build_results(plan, inputs, preds, asr_rows)
    figures = _figures(plan, inputs, res, out_dir, gradcam=gradcam)
    import torch

    machine = (f"{platform.machine()} {platform.processor() or _cpu_model()}, {os.cpu_count()} CPUs, "
               f"torch {torch.__version__} ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})")
    if recipe.train.device.startswith("cuda") and torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    meta = {
        "command": command or f"koemo reproduce --recipe {recipe.name}",
        "machine": machine,
        "wall_time_s": round(time.time() - t0, 1),
        "training_s": round(training_seconds(plan, inputs), 1),
        "dataset": f"{recipe.data.dataset} ({len(inputs.utts)} utterances, labels {', '.join(inputs.labels)})",
        "protocol": plan.main_protocol,
        "seeds": plan.seeds,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "training": f"{recipe.train.epochs} epochs, lr {recipe.train.lr:g}, batch {recipe.train.batch_size}, "
                    f"CR lambda {recipe.train.cr_lambda:g} ({recipe.train.cr_kl}, CE on {recipe.train.cr_ce_path}), "
                    f"{recipe.train.precision}",
        "model": f"hidden {recipe.model.hidden}, {recipe.model.layers} layer(s), {recipe.model.heads} heads, "
                 f"audio_pool {recipe.model.audio_pool}",
    }
    summaries = res.pop("_summaries")
    detail = dict(sorted((f"{job.slug}|{source}", s) for (job, source), s in summaries.items()))  # stable diffs
    commentary_file = out_dir / "COMMENTARY.md"
    commentary = commentary_file.read_text(encoding="utf-8") if commentary_file.is_file() else ""
    facts = auto_commentary(res, plan)
    report = {
        "title": f"koemo: the paper's experiments on {recipe.name}",
        "meta": meta,
        "table3": res["table3"],
        "table4": res["table4"],
        "asr": res["asr"],
        "snr": res["snr"],
        "protocols": res["protocols"],
        "figures": figures,
        "commentary": (commentary.strip() + "\n\n" if commentary else "")
        + "Computed from this run:\n\n" + facts,
    }
    naive = [r for r in res["table4"]]
    if naive:
        report["intro"] = ("Human-trained models tested on ASR text (the naive deployment): " + "; ".join(
            f"{r['model']} on {r['asr']} {r['gold_on_asr']['mean']:.4f}" for r in naive) + ".")
    doc = {"meta": meta, "plan": {"jobs": sorted(j.slug for j in plan.jobs), "seeds": plan.seeds},
           **{k: v for k, v in res.items()}, "figures": figures, "detail": detail}
    atomic_write_text(out_dir / "results.json", json.dumps(doc, ensure_ascii=False, indent=1, default=_json_default))
    write_report(report, out_dir)
    return doc


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(type(o).__name__)
