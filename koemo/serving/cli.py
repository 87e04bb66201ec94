"""``koemo predict`` and ``koemo serve``: the emotion recogniser as a command and as a service."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".mp4", ".ogg", ".oga", ".opus", ".webm", ".aac", ".aiff", ".aif"}

ModelOpt = typer.Option(
    None, "--model", "-m",
    help="Model bundle directory, or a named model: default (the one `make demo` trains, under "
         "$KOEMO_CACHE/bundles/default) or fast (the clip-window recipe emotiontts-fast, bundles/fast).",
)
ASROpt = typer.Option(None, "--asr", help="Speech recogniser (default: the one the bundle was made with), e.g. whisper-base.")


def audio_files(target: Path) -> list[Path]:
    """``target`` itself, or the audio files under a directory (recursively, sorted)."""
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    return [target]


RuntimeOpt = typer.Option("torch", "--runtime", help="How the fusion head runs: torch (with the audio/text "
                          "contribution), onnx or onnx-int8 (onnxruntime; the bundle's `koemo export`, else "
                          "exported once into the cache; no contribution). With onnx or onnx-int8 the Whisper "
                          "encoder runs in onnxruntime too (float32; exported once, ~1 min).")
TrimOpt = typer.Option(None, "--trim-margin", help="Cut a recording too short to be cut into utterances to its "
                       "speech plus this margin (s) before the encoders (silence at the edges moves the "
                       "voice statistics); negative: keep it whole. Default: the margin the model's "
                       "training clips were cut with (encoders.trim_margin), else 0.25.")
SharedPassOpt = typer.Option(True, "--shared-pass/--no-shared-pass", help="Decode the transcript from the speech "
                             "encoder's Whisper pass (one encoder pass per clip) where the model allows.")


def predict(
    targets: list[Path] = typer.Argument(..., metavar="FILE_OR_DIR...", help="Audio files, or directories of them (searched recursively)."),
    model: Optional[Path] = ModelOpt,
    asr: Optional[str] = ASROpt,
    json_: bool = typer.Option(False, "--json", help="Print one JSON object per file (JSON lines)."),
    segment_over: float = typer.Option(15.0, "--segment-over", help="Cut recordings longer than this (s) into utterances by voice activity."),
    normalise: str = typer.Option("speaker", "--normalise", help="For a model trained with speaker normalisation: "
                                  "speaker = the files of this call are one speaker/session (their voice statistics "
                                  "normalise each one); folder = the files of each directory are one speaker (a corpus "
                                  "laid out one speaker to a folder, never one emotion to a folder); file = each "
                                  "recording by its own utterances; none = the training corpus's statistics. Too few "
                                  "clips fall back to the corpus. A group must mix emotions: one holding a single "
                                  "emotion is normalised towards neutral (use none for it)."),
    runtime: str = RuntimeOpt,
    shared_pass: bool = SharedPassOpt,
    trim_margin: Optional[float] = TrimOpt,
) -> None:
    """Transcribe each file, recognise its emotion and print the distribution and the top label.

    The loop is :meth:`koemo.Recognizer.iter_batch`, so the command and the Python API agree."""
    from koemo.errors import KoemoError, SkipLog
    from koemo.serving.recognizer import Recognizer
    from koemo.serving.sessions import BATCH_NORMALISE_MODES

    files = []
    for target in targets:
        if not target.exists():
            raise KoemoError(f"{target}: file or directory not found")
        found = audio_files(target)
        if not found:
            raise KoemoError(f"{target}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) found")
        files.extend(found)
    if normalise not in BATCH_NORMALISE_MODES:
        raise KoemoError(f"--normalise {normalise!r}: use one of {', '.join(BATCH_NORMALISE_MODES)}")
    rec = Recognizer.from_pretrained(str(model) if model is not None else "default", asr=asr, runtime=runtime,
                                     segment_over=segment_over, shared_pass=shared_pass, trim_margin=trim_margin)
    skips = SkipLog("files")
    table = None
    if not json_:
        from rich.table import Table

        table = Table()
        table.add_column("file", overflow="fold", max_width=24)
        table.add_column("span", justify="right", no_wrap=True)
        table.add_column("label", style="bold", no_wrap=True)
        for label in rec.labels:
            table.add_column(label[:7], justify="right", no_wrap=True)
        table.add_column("transcript", overflow="fold")
    done = 0
    for path, result in rec.iter_batch(files, normalise=normalise, errors="skip", progress=True):
        if isinstance(result, Exception):
            skips.skip(result)
            continue
        done += 1
        for warning in result.warnings:
            typer.echo(f"{path}: {warning}", err=True)
        if json_:
            sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            continue
        probs = result.probabilities
        segmented = len(result.segments) > 1
        transcript = result.transcript
        if segmented and len(transcript) > 40:  # each utterance's text is on its own row below
            transcript = transcript[:39] + "…"
        table.add_row(Path(path).name, f"{result.duration:.1f} s", result.label,
                      *(f"{probs[lab]:.2f}" for lab in rec.labels), transcript)
        if segmented:
            for seg in result.segments:
                table.add_row("", f"{seg.start:.1f}-{seg.end:.1f}", seg.label,
                              *(f"{seg.probabilities[lab]:.2f}" for lab in rec.labels), seg.transcript, style="dim")
    if table is not None and table.row_count:
        from rich.console import Console

        table.title = f"emotion ({done} file{'s' if done != 1 else ''})"
        Console().print(table)
    if len(skips):
        typer.echo(skips.summary(len(files) - len(skips)), err=True)
        raise typer.Exit(1)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port", "-p"),
    model: Optional[Path] = ModelOpt,
    asr: Optional[str] = ASROpt,
    workers: int = typer.Option(1, "--workers", help="Requests predicted at the same time."),
    max_upload_mb: float = typer.Option(25.0, "--max-upload-mb", help="Largest upload accepted (413 beyond)."),
    max_duration: float = typer.Option(300.0, "--max-duration", help="Longest audio accepted in seconds (413 beyond)."),
    segment_over: float = typer.Option(15.0, "--segment-over", help="Cut recordings longer than this (s) into utterances."),
    api_keys: Optional[Path] = typer.Option(None, "--api-keys", help="Key file (`koemo keys add FILE NAME`): every "
                                            "endpoint but /v1/health and the web page then needs a key. Default: open."),
    rate_limit: int = typer.Option(60, "--rate-limit", help="Requests per minute per API key (429 beyond); 0: no limit."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Origin allowed to call the API from a browser "
                                          "(repeatable), e.g. https://app.example.com. Default: none."),
    log_transcripts: bool = typer.Option(False, "--log-transcripts", help="Write transcripts to the log (personal data; off by default)."),
    deployment_session: bool = typer.Option(False, "--deployment-session", help="Requests without session=ID share one "
                                            "session: once 3 utterances have come, each is normalised by the voice "
                                            "statistics of all such requests so far (this service's channel and callers) "
                                            "instead of the studio corpus's; +12 to +18 points of weighted F1 under a new "
                                            "channel (benchmarks/deployment_stats.py). Traffic of a single emotion would be "
                                            "normalised towards neutral. Off by default."),
    runtime: str = RuntimeOpt,
    shared_pass: bool = SharedPassOpt,
    trim_margin: Optional[float] = TrimOpt,
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/health, GET /v1/model, docs at /docs, web page at /."""
    import logging

    import uvicorn

    from koemo.allocator import limit_arenas
    from koemo.errors import KoemoError
    from koemo.serving.app import create_app
    from koemo.serving.limits import Limits
    from koemo.serving.loader import load_predictor
    from koemo.serving.security import KeyStore, Security, is_loopback, uvicorn_log_config

    if rate_limit < 0:
        raise KoemoError(f"--rate-limit {rate_limit}: use 0 (no limit) or more requests per minute")
    security = Security(
        keys=KeyStore.load(api_keys) if api_keys else None, rate_limit=rate_limit,
        cors_origins=tuple(cors_origin), log_transcripts=log_transcripts,
    )
    limits = Limits(
        max_upload_mb=max_upload_mb, max_duration_s=max_duration, segment_over_s=segment_over, workers=workers
    )
    limit_arenas()  # before the models and the worker threads allocate (koemo/allocator.py)
    predictor = load_predictor(model, asr=asr, limits=limits, runtime=runtime, shared_pass=shared_pass,
                               trim_margin=trim_margin)
    app = create_app(predictor, limits, security, deployment_session=deployment_session)
    log_config = uvicorn_log_config()
    if security.keys is None and not is_loopback(host):
        logging.getLogger("koemo.serving").warning(
            "listening on %s without API keys: anyone who can reach this port can use the service "
            "(pass --api-keys FILE)", host)
    typer.echo(f"koemo serving on http://{host}:{port}/ (API docs at /docs)"
               + (f"; {len(security.keys.names())} API key(s)" if security.keys else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config)


keys_app = typer.Typer(help="API keys for `koemo serve --api-keys FILE` (the file keeps only their hashes).",
                       no_args_is_help=True)


@keys_app.command("add")
def keys_add(
    file: Path = typer.Argument(..., help="Key file (created with mode 0600 if missing)."),
    name: str = typer.Argument(..., help="A name for the key (who or what uses it): 1-64 letters, digits or ._-"),
) -> None:
    """Make a new random key, append its hash to FILE and print the key: it is shown only this once."""
    from koemo.serving.security import add_key

    key = add_key(file, name)
    typer.echo(f"added key {name!r} to {file}; it is shown only now:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(file: Path = typer.Argument(..., help="Key file.")) -> None:
    """The names of the keys in FILE (the keys themselves are not stored)."""
    from koemo.serving.security import KeyStore

    for name in KeyStore.load(file).names():
        typer.echo(name)


def export(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="Model bundle directory (or a training run's: its best bundle)."),
    format_: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    int8: bool = typer.Option(False, "--int8", help="Quantise the weights to int8 (onnxruntime dynamic quantisation)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: BUNDLE/fusion.onnx, "
                                       "or BUNDLE/fusion.int8.onnx with --int8); a .json sidecar goes beside it."),
) -> None:
    """Export the bundle's fusion head to ONNX, checked equal to PyTorch before it is written."""
    from koemo.serving.export import export_onnx

    r = export_onnx(bundle, out, int8=int8, fmt=format_)
    typer.echo(f"wrote {r.path} ({r.bytes} bytes; {r.fusion} fusion head, opset {r.opset}"
               f"{', int8' if r.int8 else ''}) and {r.sidecar.name}")
    typer.echo(f"{r.metric} vs PyTorch: {r.max_diff:.3g} (tolerance {r.tolerance:g}); "
               f"top label agrees on {r.argmax_agree}/{r.checks} random inputs")


def register(root: typer.Typer) -> None:
    root.command("predict")(predict)
    root.command("export")(export)
    root.command("serve")(serve)
    root.add_typer(keys_app, name="keys")
