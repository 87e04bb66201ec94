"""The utterance manifest: one row per utterance, the single table every stage reads and extends.

Schema (JSONL, one object per line; the CSV form flattens ``transcripts`` into ``asr:<source>``
columns):

=============  ==========================================================================
id             unique utterance id (e.g. ``nea00201``)
audio          path to the audio (or video) file
text           the human transcript (the "golden" text); may be empty for unlabelled audio
label          canonical emotion (see ``koemo.data.labels``)
speaker        speaker id
group          sentence / script id: utterances sharing it read the same sentence
duration       seconds
dataset        which loader produced the row
start, end     optional time span inside ``audio`` in seconds (AIHub clips cut from a video)
transcripts    ``{text source: text}``, e.g. ``{"asr:whisper-base": "..."}`` (from ``transcribe``)
=============  ==========================================================================
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

from koemo.errors import BadInputError, KoemoError, SkipLog
from koemo.paths import atomic_path
from koemo.sources import ASR_PREFIX, TextSource

REQUIRED = ("id", "audio", "label")


@dataclass
class Utterance:
    id: str
    audio: str
    label: str
    text: str = ""
    speaker: str = ""
    group: str = ""
    duration: float = 0.0
    dataset: str = ""
    start: float | None = None
    end: float | None = None
    transcripts: dict[str, str] = field(default_factory=dict)

    def text_for(self, source: str) -> str:
        """The text of a text source: ``gold`` is the human transcript, else a transcript column."""
        if source == "gold":
            return self.text
        if source not in self.transcripts:
            raise BadInputError(
                self.id, f"no '{source}' transcript; run: {TextSource.parse(source).transcribe_command()}"
            )
        return self.transcripts[source]

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["start"] is None:
            del d["start"]
        if d["end"] is None:
            del d["end"]
        return d


_FIELDS = {f.name for f in fields(Utterance)}
_FLOATS = {"duration", "start", "end"}


def utterance_from_row(row: dict, where: str, default_ids: bool = False) -> Utterance:
    """Build an utterance from a loose row (CSV/JSON), naming the row when columns are missing.

    With ``default_ids`` a row without an id takes its audio file's stem (user manifests).
    """
    if default_ids and not str(row.get("id") or "").strip() and str(row.get("audio") or "").strip():
        row = {**row, "id": Path(str(row["audio"])).stem}
    missing = [c for c in REQUIRED if not str(row.get(c) or "").strip()]
    if missing:
        raise BadInputError(where, f"row is missing required column(s): {', '.join(missing)}")
    kwargs: dict = {}
    transcripts = dict(row.get("transcripts") or {})
    for key, value in row.items():
        if key is None:
            raise BadInputError(where, "row has more values than the header has columns")
        if key.startswith(ASR_PREFIX) and key != "transcripts":
            if value not in (None, ""):
                transcripts[key] = str(value)
        elif key in _FIELDS and key != "transcripts":
            if key in _FLOATS:
                if value in (None, ""):
                    continue
                try:
                    kwargs[key] = float(value)
                except (TypeError, ValueError):
                    raise BadInputError(where, f"column {key} is not a number: {value!r}") from None
            else:
                kwargs[key] = "" if value is None else str(value)
    kwargs["transcripts"] = transcripts
    return Utterance(**kwargs)


def read_manifest(
    path: str | Path, skips: SkipLog | None = None, default_ids: bool = False
) -> list[Utterance]:
    """Read a JSONL or CSV manifest. Bad rows are skipped into ``skips`` (or raise without one)."""
    path = Path(path)
    if not path.is_file():
        raise KoemoError(f"{path}: manifest not found (make one with: koemo data prepare)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    rows: list[tuple[str, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                err = BadInputError(f"{path}:{n}", f"invalid JSON ({e.msg})")
                if skips is None:
                    raise err from None
                skips.skip(err)
                continue
            rows.append((f"{path}:{n}", obj if isinstance(obj, dict) else {}))
    else:
        reader = csv.DictReader(text.splitlines())
        for n, row in enumerate(reader, 2):
            rows.append((f"{path}:{n}", row))
    out = []
    seen: set[str] = set()
    for where, row in rows:
        try:
            utt = utterance_from_row(row, where, default_ids)
            if utt.id in seen:
                raise BadInputError(where, f"duplicate utterance id {utt.id!r}")
            seen.add(utt.id)
            out.append(utt)
        except BadInputError as e:
            if skips is None:
                raise
            skips.skip(e)
    return out


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> Path:
    """Write atomically; ``.csv`` flattens transcripts into ``asr:<source>`` columns."""
    path = Path(path)
    utterances = list(utterances)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            sources = sorted({s for u in utterances for s in u.transcripts})
            base = [f.name for f in fields(Utterance) if f.name != "transcripts"]
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=base + sources)
                writer.writeheader()
                for u in utterances:
                    row = {k: v for k, v in asdict(u).items() if k != "transcripts"}
                    row = {k: ("" if v is None else v) for k, v in row.items()}
                    row.update({s: u.transcripts.get(s, "") for s in sources})
                    writer.writerow(row)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for u in utterances:
                    f.write(json.dumps(u.to_dict(), ensure_ascii=False) + "\n")
    return path


def filter_labels(
    utterances: Iterable[Utterance], labels: tuple[str, ...], skips: SkipLog | None = None
) -> list[Utterance]:
    """Keep utterances whose label is in ``labels`` (the others are reported, not silently lost)."""
    kept = []
    dropped = 0
    for u in utterances:
        if u.label in labels:
            kept.append(u)
        else:
            dropped += 1
    if dropped and skips is not None:
        import logging

        logging.getLogger("koemo").info("%d utterances outside the label set %s", dropped, labels)
    return kept
