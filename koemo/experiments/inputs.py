"""What the grid reads, loaded once: utterances with every transcript, the ASR table, and the
features of every encoder and text source; and the *inputs pack* that carries them to another
machine (``koemo reproduce --save-inputs`` / ``--inputs``), so a GPU box trains the grid with
neither the ASR nor the encoders' weights there."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from koemo.encoders.base import speech_settings
from koemo.errors import KoemoError
from koemo.experiments.grid import Job, ModelSpec, Plan, sources_of
from koemo.sources import TextSource

log = logging.getLogger("koemo")


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
    #: speech encoder -> augmented copies of its features (recipe section augment; not packed)
    speech_copies: dict[str, list] = field(default_factory=dict)
    #: (speech encoder, view, normalisation, min clips) -> (the heads' speech input, its copies, its description)
    views: dict[tuple, tuple] = field(default_factory=dict)


def feature_data(job: Job, tests: set[str], inputs: Inputs, recipe=None):
    """The trainer's input for ``job``: its encoders' tables for every source it reads (an
    :class:`~koemo.training.data.AbsentModality` for a modality its model ignores), the speech
    frames as the job's fusion reads them (``recipe``: the job's; views are shared between jobs
    that read the same). Returns the data and the speech input's description and arrays."""
    from koemo.training.data import AbsentModality, FeatureData

    audio, copies, spec = AbsentModality(), (), None
    if job.model.speech:
        audio = inputs.speech[job.model.speech]
        if recipe is not None:
            from koemo.fusion.registry import speech_view
            from koemo.training.features import speech_input

            key = (job.model.speech, speech_view(recipe.model), recipe.encoders.normalise,
                   recipe.encoders.normalise_min_clips, recipe.encoders.speech_pool)
            if key not in inputs.views:
                inputs.views[key] = speech_input(recipe, audio, inputs.utts, inputs.speech_copies.get(job.model.speech, ()))
            audio, copies, spec = inputs.views[key]
    text = {s: (inputs.text[(job.model.text, s)] if job.model.text else AbsentModality())
            for s in sorted(sources_of(job, tests))}
    return FeatureData(audio, text, {u.id: u.label for u in inputs.utts}, inputs.labels,
                       copies if spec is not None else ()), spec


def encoder_meta(model: ModelSpec, inputs: Inputs, spec=None) -> dict:
    """Encoder names, ids (version and weights checksum) and dims, for the bundles; ``spec`` the
    speech input's description (:class:`koemo.training.features.SpeechInput`)."""
    meta: dict[str, Any] = {}
    if model.speech:
        meta["speech"] = dict(inputs.encoder_meta["speech"][model.speech])
        if spec is not None:
            meta["speech"]["input"] = spec.meta()
    if model.text:
        meta["text"] = inputs.encoder_meta["text"][model.text]
    return meta


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
        from koemo.encoders.one_pass import recogniser_factory

        _one_pass(plan, utts, progress)
        for source in plan.all_asr_sources:
            ts = TextSource.parse(source)
            log.info("transcripts %s", source)
            report = transcribe_manifest(manifest, ts.backend, ts.noise, ts.snr, ts.seed, recipe.asr.jobs,
                                         factory=recogniser_factory(recipe, ts.backend), progress=progress)
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
    from koemo.training.features import audio_copies, encoder_meta as describe, speech_frames, store_for

    store = store_for(recipe)
    for name in plan.speech_encoders():
        settings = speech_settings(recipe.encoders, name)
        prosody = recipe.encoders.prosody and name == recipe.encoders.speech
        inputs.speech[name] = _complete(speech_frames(store, recipe.encoders, utts, name=name, progress=progress),
                                        utts, f"speech features {name}")
        inputs.encoder_meta["speech"][name] = {**describe("speech", name, **settings), "layer": settings["layer"],
                                               **({"prosody": True} if prosody else {}),
                                               **({"trim_margin": recipe.encoders.trim_margin}
                                                  if recipe.encoders.trim_margin is not None else {})}
        if recipe.augment.copies and name == recipe.encoders.speech:
            inputs.speech_copies[name] = audio_copies(recipe.augment, store, recipe.encoders, utts, progress=progress)
    for name, sources in sorted(plan.text_needs().items()):
        for s in sorted(sources):
            inputs.text[(name, s)] = _complete(store.text(name, utts, s, progress=progress), utts,
                                               f"text features {name} [{s}]")
        inputs.encoder_meta["text"][name] = describe("text", name)
    return inputs, asr_rows


def _one_pass(plan: Plan, utts: list, progress: bool) -> None:
    """With ``asr.shared_pass``, when the plan reads clean whisper-base transcripts and the
    encoder's every-layer features: one pass per clip fills both (:mod:`koemo.encoders.one_pass`).
    Not on Ray (``--ray``): there the actors transcribe and encode."""
    from koemo import distributed

    recipe = plan.recipe
    if not recipe.asr.shared_pass or distributed.active():
        return
    from koemo.encoders.one_pass import fill, gives_recipe_features, recogniser_factory

    clean = any(TextSource.parse(s).backend == "whisper-base" and TextSource.parse(s).noise is None
                for s in plan.all_asr_sources)
    if clean and gives_recipe_features(recipe) and recipe.encoders.speech in plan.speech_encoders():
        from koemo.training.features import store_for

        fill(utts, store_for(recipe), factory=recogniser_factory(recipe, "whisper-base"), progress=progress)


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


