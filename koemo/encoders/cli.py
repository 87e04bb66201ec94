"""``koemo transcribe``, ``koemo features extract|list`` and ``koemo encoders list|train-fasttext``.

``koemo transcribe`` lives here, not in :mod:`koemo.asr.cli`: with a recipe's ``asr.shared_pass``
its recogniser is the speech encoder's own pass (:mod:`koemo.encoders.one_pass`), which also
fills the feature store."""

from __future__ import annotations

from typing import Optional

import typer

from koemo.cliutil import (DataDirOpt, JsonOpt, RayAddressOpt, RayGpusOpt, RayOpt, RecipeOpt, SetOpt, print_json,
                           ray_engine, recipe_from)

features = typer.Typer(help="The feature store: encoder outputs cached per utterance.", no_args_is_help=True)
encoders = typer.Typer(help="Speech and text encoders: list, train the FastText baseline.", no_args_is_help=True)


def transcribe(
    recipe: str = RecipeOpt,
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b",
        help="Recogniser: whisper-base | vosk-ko | whisper:<dir-or-hub-name> | google | whisper-base-noguards "
        "(default: the recipe's asr.backend).",
    ),
    noise: Optional[str] = typer.Option(None, "--noise", help="Add noise first: white | pink | babble."),
    snr: Optional[float] = typer.Option(None, "--snr", help="Signal-to-noise ratio of the added noise, in dB."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Noise seed (default: the recipe's asr.seed)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Worker processes (default: the recipe's asr.jobs)."),
    sample: Optional[int] = typer.Option(
        None, "--sample", min=1,
        help="Only N utterances, evenly spaced over the manifest (a quick look at a slow condition; "
        "asr-eval counts the rest as missing, a later full run reuses these).",
    ),
    overrides: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
    json_: bool = JsonOpt,
    ray: bool = RayOpt,
    ray_address: Optional[str] = RayAddressOpt,
    ray_gpus: float = RayGpusOpt,
) -> None:
    """Transcribe every utterance of the recipe's dataset into the manifest column asr:<backend>, or asr:<backend>@<noise>-<snr>db with noise.

    Transcripts are cached (SQLite under the cache root): a re-run is instant, an interrupted run resumes.
    With the recipe's asr.shared_pass, whisper-base is decoded from the speech encoder's pass (as
    koemo predict does), and that pass also fills the feature store where the recipe reads every
    layer of whisper-base-encoder.
    """
    from koemo.asr.transcribe import transcribe_manifest
    from koemo.data.prepare import load_or_prepare
    from koemo.encoders.one_pass import fill, gives_recipe_features, recogniser_factory
    from koemo.encoders.store import store_for

    cfg = recipe_from(recipe, overrides)
    asr = cfg.asr
    noise = noise if noise is not None else asr.noise
    snr = snr if snr is not None else asr.snr
    backend = backend or asr.backend
    factory = recogniser_factory(cfg, backend)
    path, utts = load_or_prepare(cfg, data_dir)
    if (factory is not None and gives_recipe_features(cfg) and noise is None and sample is None
            and not (ray or ray_address)):
        fill(utts, store_for(cfg), factory=factory)  # asr.shared_pass: the pass that decodes a clip stores the recipe's features too
    with ray_engine(ray, ray_address, ray_gpus):  # --ray: Ray actors instead of --jobs processes
        report = transcribe_manifest(
            path, backend, noise, snr, asr.seed if seed is None else seed,
            asr.jobs if jobs is None else jobs, sample=sample, factory=factory,
        )
    if json_:
        print_json({"source": report.source, "manifest": str(path), "transcripts": len(report.texts),
                    "new": report.computed, "cached": report.cached, "skipped": len(report.skips)})
    else:
        typer.echo(f"{report.summary()}; manifest: {path}")


@features.command()
def extract(
    recipe: str = RecipeOpt,
    encoder: Optional[list[str]] = typer.Option(
        None, "--encoder", "-e",
        help="Encoder name (repeatable); default: the recipe's encoders.speech and encoders.text."),
    text_source: Optional[list[str]] = typer.Option(
        None, "--text-source", "-t", help="gold | asr:BACKEND[@noise-snr] (repeatable; text encoders only)."),
    layer: Optional[int] = typer.Option(None, help="Encoder layer (default: the recipe's speech_layer for speech, last)."),
    store_dir: Optional[str] = typer.Option(None, "--store", help="Feature store root (default: <cache>/features)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N utterances (for trials)."),
    overrides: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
    ray: bool = RayOpt,
    ray_address: Optional[str] = RayAddressOpt,
    ray_gpus: float = RayGpusOpt,
) -> None:
    """Encode every utterance of the recipe's manifest and cache the results (resumable; --ray: on Ray actors)."""
    import logging
    from pathlib import Path

    from koemo.data.prepare import load_or_prepare
    from koemo.encoders.store import FeatureStore

    cfg = recipe_from(recipe, overrides)
    _, utts = load_or_prepare(cfg, data_dir)
    if limit:
        utts = utts[:limit]
    names = encoder or [cfg.encoders.speech, cfg.encoders.text]
    sources = text_source or ["gold"]
    store = FeatureStore(Path(store_dir) if store_dir else None)
    log = logging.getLogger("koemo")
    with ray_engine(ray, ray_address, ray_gpus):
        _extract(store, utts, names, sources, layer, cfg, log)


def _extract(store, utts, names, sources, layer, cfg, log) -> None:
    import time

    from koemo.encoders import encoder_kind
    from koemo.encoders.base import speech_settings
    from koemo.encoders.store import check_sources
    from koemo.errors import SkipLog

    for name in names:
        kind = encoder_kind(name)
        runs = [None] if kind == "speech" else sources
        if kind == "text":
            check_sources(utts, sources)
        for source in runs:
            skips = SkipLog()
            t0 = time.time()
            if kind == "speech":
                settings = speech_settings(cfg.encoders, name)
                if layer is not None:
                    settings["layer"] = layer
                got = store.speech(name, utts, skips=skips, **settings)
                label = name
            else:
                got = store.text(name, utts, source=source, layer=layer, skips=skips)
                label = f"{name} [{source}]"
            log.info("%s: %d utterances (%d cached, %d extracted, %d skipped) in %.1f s", label, len(got),
                     store.hits, store.extracted, len(skips), time.time() - t0)
            typer.echo(f"{label}: {skips.summary(len(got))}")


@features.command("list")
def list_features(store_dir: Optional[str] = typer.Option(None, "--store"), json_: bool = JsonOpt) -> None:
    """What the feature store holds, per encoder id."""
    from pathlib import Path

    from koemo.encoders.store import FeatureStore

    rows = FeatureStore(Path(store_dir) if store_dir else None).list()
    if json_:
        print_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['kind']:6} {r['entries']:6d} entries {r['mb']:8.1f} MB  {r['id']}")


@encoders.command("list")
def list_encoders(json_: bool = JsonOpt) -> None:
    """Known encoders with their width, frame rate and whether they can be fine-tuned."""
    from koemo.encoders import SPEECH_ENCODERS, TEXT_ENCODERS

    rows = []
    for kind, reg in (("speech", SPEECH_ENCODERS), ("text", TEXT_ENCODERS)):
        for name in reg.names():
            cls = reg.get(name)
            rows.append({"kind": kind, "name": name + (":<dir-or-name>" if name.startswith("hf-") else ""),
                         "dim": cls.dim or "from config", "frame_rate": cls.frame_rate,
                         "finetunable": cls.finetunable, "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""})
    if json_:
        print_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['kind']:6} {r['name']:26} dim={r['dim']!s:12} frames/s={r['frame_rate']!s:6} finetunable={r['finetunable']}")


@encoders.command("train-fasttext")
def train_fasttext_cmd(
    recipe: str = RecipeOpt,
    vector_size: int = typer.Option(300, help="Vector width (the paper's Korean FastText: 300)."),
    epochs: int = typer.Option(5),
    min_count: int = typer.Option(2),
    max_sentences: Optional[int] = typer.Option(None, help="Train on a random subset (trials, tests)."),
    workers: int = typer.Option(1, help="gensim worker threads."),
    force: bool = typer.Option(False, help="Retrain even if trained."),
    corpus: Optional[str] = typer.Option(None, help="Corpus folder (default: <data>/korean_emotion_text)."),
    overrides: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Train the fasttext-ko baseline on Korean emotion text, leaving out the recipe's sentences."""
    from pathlib import Path

    from koemo.data.prepare import load_or_prepare
    from koemo.data.text_corpora import DEFAULT_SUBDIR
    from koemo.encoders.fasttext import train_fasttext
    from koemo.paths import data_dir as data_root

    cfg = recipe_from(recipe, overrides)
    _, utts = load_or_prepare(cfg, data_dir)
    exclude = {u.text for u in utts if u.text.strip()}
    root = Path(corpus) if corpus else data_root(data_dir) / DEFAULT_SUBDIR
    out = train_fasttext(root, exclude_texts=exclude, vector_size=vector_size, epochs=epochs,
                         min_count=min_count, max_sentences=max_sentences, workers=workers, force=force)
    typer.echo(f"fasttext-ko: {out}")


def register(root: typer.Typer) -> None:
    root.command("transcribe")(transcribe)
    root.add_typer(features, name="features")
    root.add_typer(encoders, name="encoders")
