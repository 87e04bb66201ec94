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
    help="Model bundle directory (default: the one `make demo` trains, under $KOEMO_CACHE/bundles/default).",
)
ASROpt = typer.Option(None, "--asr", help="Speech recogniser (default: the one the bundle was made with), e.g. whisper-base.")


def audio_files(target: Path) -> list[Path]:
    """``target`` itself, or the audio files under a directory (recursively, sorted)."""
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    return [target]


def predict(
    targets: list[Path] = typer.Argument(..., metavar="FILE_OR_DIR...", help="Audio files, or directories of them (searched recursively)."),
    model: Optional[Path] = ModelOpt,
    asr: Optional[str] = ASROpt,
    json_: bool = typer.Option(False, "--json", help="Print one JSON object per file (JSON lines)."),
    segment_over: float = typer.Option(15.0, "--segment-over", help="Cut recordings longer than this (s) into utterances by voice activity."),
    normalise: str = typer.Option("speaker", "--normalise", help="For a model trained with speaker normalisation: "
                                  "speaker = the files of this call are one speaker/session (their voice statistics "
                                  "normalise each one); file = each recording by its own utterances; none = the "
                                  "training corpus's statistics. Too few clips fall back to the corpus."),
) -> None:
    """Transcribe each file, recognise its emotion and print the distribution and the top label."""
    from koemo.data.audio import load_audio
    from koemo.errors import BadInputError, KoemoError, SkipLog
    from koemo.serving.limits import Limits, check_wav_complete
    from koemo.serving.loader import load_predictor

    files = []
    for target in targets:
        if not target.exists():
            raise KoemoError(f"{target}: file or directory not found")
        found = audio_files(target)
        if not found:
            raise KoemoError(f"{target}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) found")
        files.extend(found)
    from koemo.serving.sessions import NORMALISE_MODES, Session

    if normalise not in NORMALISE_MODES:
        raise KoemoError(f"--normalise {normalise!r}: use one of {', '.join(NORMALISE_MODES)}")
    predictor = load_predictor(
        model, asr=asr, limits=Limits(max_duration_s=0, segment_over_s=segment_over)
    )
    skips = SkipLog("files")
    total = len(files)
    session = None
    if normalise == "speaker" and predictor.speech_stage.normaliser is not None:
        # first pass: every file's voice statistics, so each file is normalised by all of them
        session = Session()
        for path in list(files):
            try:
                predictor.observe(load_audio(path), session, name=str(path))
            except BadInputError as e:
                skips.skip(e)
                files.remove(path)
    table = None
    if not json_:
        from rich.table import Table

        table = Table(title=f"emotion ({len(files)} file{'s' if len(files) != 1 else ''})")
        table.add_column("file", overflow="fold", max_width=24)
        table.add_column("span", justify="right", no_wrap=True)
        table.add_column("label", style="bold", no_wrap=True)
        for label in predictor.labels:
            table.add_column(label[:7], justify="right", no_wrap=True)
        table.add_column("transcript", overflow="fold")
    for path in files:
        try:
            if path.suffix.lower() == ".wav" and path.is_file():
                check_wav_complete(path.read_bytes(), str(path))
            result = predictor.predict(load_audio(path), name=str(path), session=session, normalise=normalise,
                                       update_session=False)
        except BadInputError as e:
            skips.skip(e)
            continue
        if json_:
            sys.stdout.write(json.dumps({"file": str(path), **result}, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            continue
        probs = result["probabilities"]
        segmented = len(result["segments"]) > 1
        transcript = result["transcript"]
        if segmented and len(transcript) > 40:  # each utterance's text is on its own row below
            transcript = transcript[:39] + "…"
        table.add_row(
            path.name, f"{result['duration']:.1f} s", result["label"],
            *(f"{probs[lab]:.2f}" for lab in predictor.labels), transcript,
        )
        if segmented:
            for seg in result["segments"]:
                table.add_row(
                    "", f"{seg['start']:.1f}-{seg['end']:.1f}", seg["label"],
                    *(f"{seg['probabilities'][lab]:.2f}" for lab in predictor.labels), seg["transcript"],
                    style="dim",
                )
    if table is not None and table.row_count:
        from rich.console import Console

        Console().print(table)
    if len(skips):
        typer.echo(skips.summary(total - len(skips)), err=True)
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
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/health, GET /v1/model, docs at /docs, web page at /."""
    import uvicorn

    from koemo.serving.app import create_app
    from koemo.serving.limits import Limits
    from koemo.serving.loader import load_predictor

    limits = Limits(
        max_upload_mb=max_upload_mb, max_duration_s=max_duration, segment_over_s=segment_over, workers=workers
    )
    predictor = load_predictor(model, asr=asr, limits=limits)
    app = create_app(predictor, limits)
    typer.echo(f"koemo serving on http://{host}:{port}/ (API docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(root: typer.Typer) -> None:
    root.command("predict")(predict)
    root.command("serve")(serve)
