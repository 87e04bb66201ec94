"""``koemo transcribe`` and ``koemo asr-eval``."""

from __future__ import annotations

from typing import Optional

import typer

from koemo.cliutil import (DataDirOpt, JsonOpt, RayAddressOpt, RayGpusOpt, RayOpt, RecipeOpt, SetOpt, print_json,
                           ray_engine, recipe_from)


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
    koemo predict does), and that pass also fills the feature store of whisper-base-encoder (every layer).
    """
    from koemo.asr.one_pass import backend_options
    from koemo.asr.transcribe import transcribe_manifest
    from koemo.data.prepare import load_or_prepare

    cfg = recipe_from(recipe, overrides)
    asr = cfg.asr
    noise = noise if noise is not None else asr.noise
    snr = snr if snr is not None else asr.snr
    backend = backend or asr.backend
    options = backend_options(asr, backend)
    path, utts = load_or_prepare(cfg, data_dir)
    if options and noise is None and sample is None and not (ray or ray_address):
        # asr.shared_pass: the pass that decodes each clip also fills the Whisper encoder's features
        from koemo.asr.one_pass import fill
        from koemo.training.features import store_for

        fill(utts, store_for(cfg))
    with ray_engine(ray, ray_address, ray_gpus):  # --ray: Ray actors instead of --jobs processes
        report = transcribe_manifest(
            path, backend, noise, snr, asr.seed if seed is None else seed,
            asr.jobs if jobs is None else jobs, backend_options=options, sample=sample,
        )
    if json_:
        print_json({"source": report.source, "manifest": str(path), "transcripts": len(report.texts),
                    "new": report.computed, "cached": report.cached, "skipped": len(report.skips)})
    else:
        typer.echo(f"{report.summary()}; manifest: {path}")


def asr_eval(
    recipe: str = RecipeOpt,
    sources: Optional[list[str]] = typer.Option(
        None, "--source", help="Transcript column to score, e.g. asr:whisper-base@babble-10db (repeatable; default: all asr:* columns)."
    ),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write the table: .csv (all counts) or .md (Markdown)."),
    overrides: Optional[list[str]] = SetOpt,
    data_dir: Optional[str] = DataDirOpt,
    json_: bool = JsonOpt,
) -> None:
    """CER, WER and sWER of ASR transcripts against the human transcript (corpus level: total edits / reference length)."""
    from koemo.asr.evaluate import evaluate_sources, to_markdown, write_table
    from koemo.data.prepare import load_or_prepare

    cfg = recipe_from(recipe, overrides)
    _, utts = load_or_prepare(cfg, data_dir)
    results = evaluate_sources(utts, sources)
    if json_:
        print_json([{"source": s, "missing": m, **sc.as_dict()} for s, m, sc in results])
    else:
        typer.echo(to_markdown(results), nl=False)
    if out:
        typer.echo(f"wrote {write_table(results, out)}", err=True)


def register(root: typer.Typer) -> None:
    root.command("transcribe")(transcribe)
    root.command("asr-eval")(asr_eval)
