"""Score transcript columns of a manifest against the human transcript (``koemo asr-eval``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from koemo.asr.metrics import ASRScores, score
from koemo.data.manifest import Utterance
from koemo.sources import ASR_PREFIX
from koemo.errors import KoemoError
from koemo.paths import atomic_write_text

COLUMNS = ("source", "clips", "missing", "CER %", "WER %", "sWER %", "empty")


def evaluate_sources(utts: Sequence[Utterance], sources: Sequence[str] | None = None) -> list[tuple[str, int, ASRScores]]:
    """``(source, missing, scores)`` per source; utterances without that column count as missing."""
    with_ref = [u for u in utts if u.text.strip()]
    if not with_ref:
        raise KoemoError("no utterance has a human transcript to score against")
    available = sorted({s for u in with_ref for s in u.transcripts})
    if not sources:
        sources = [s for s in available if s.startswith(ASR_PREFIX)]
        if not sources:
            raise KoemoError("the manifest has no transcripts yet; make some with: koemo transcribe --backend NAME")
    rows = []
    for source in sources:
        if source not in available:
            raise KoemoError(
                f"no '{source}' transcripts in the manifest (have: {', '.join(available) or 'none'}); "
                f"make them with: koemo transcribe"
            )
        scored = [u for u in with_ref if source in u.transcripts]
        rows.append((source, len(with_ref) - len(scored), score([u.text for u in scored], [u.transcripts[source] for u in scored])))
    return rows


def table_rows(results) -> list[list[str]]:
    return [
        [source, str(s.utterances), str(missing), f"{100 * s.cer:.1f}", f"{100 * s.wer:.1f}", f"{100 * s.swer:.1f}", str(s.empty_hypotheses)]
        for source, missing, s in results
    ]


def to_markdown(results) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def to_csv(results) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["source", "clips", "missing", "cer", "wer", "swer", "empty",
                     "char_edits", "ref_chars", "word_edits", "ref_words", "spaced_word_edits", "ref_spaced_words"])
    for source, missing, s in results:
        writer.writerow([source, s.utterances, missing, f"{s.cer:.4f}", f"{s.wer:.4f}", f"{s.swer:.4f}", s.empty_hypotheses,
                         s.char_edits, s.ref_chars, s.word_edits, s.ref_words, s.spaced_word_edits, s.ref_spaced_words])
    return out.getvalue()


def write_table(results, path: str | Path) -> Path:
    """``.csv`` gets every count; anything else gets the Markdown table."""
    path = Path(path)
    atomic_write_text(path, to_csv(results) if path.suffix.lower() == ".csv" else to_markdown(results))
    return path
