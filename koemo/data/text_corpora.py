"""Text-only Korean emotion corpora (``../shared/data/korean_emotion_text``), for text pre-training.

- ``single_turn_dialogue.csv``: columns ``Sentence,Emotion`` with Korean labels (행복, 놀람, ...).
  The published file is CP949 (EUC-KR), not UTF-8; we try UTF-8 first, then CP949.
- ``aihub263_*.csv``: ``발화문`` plus five annotators' emotions (``1번 감정`` .. ``5번 감정``); the
  label is the annotators' majority, and sentences without a strict majority are skipped.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from koemo.data.labels import normalize_label
from koemo.errors import BadInputError, KoemoError, SkipLog

DEFAULT_SUBDIR = "korean_emotion_text"
ENCODINGS = ("utf-8-sig", "cp949")


@dataclass(frozen=True)
class TextExample:
    id: str
    text: str
    label: str
    source: str


def _decode(path: Path) -> str:
    data = path.read_bytes()
    for enc in ENCODINGS:
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    raise BadInputError(path, f"text file is neither UTF-8 nor CP949 ({', '.join(ENCODINGS)} tried)")


def _clean(text: str) -> str:
    return unicodedata.normalize("NFC", " ".join((text or "").split()))


def load_single_turn(path: Path, skips: SkipLog) -> list[TextExample]:
    rows = csv.DictReader(io.StringIO(_decode(path)))
    if not rows.fieldnames or not {"Sentence", "Emotion"} <= set(rows.fieldnames):
        raise BadInputError(path, "expected the columns Sentence,Emotion")
    out = []
    for n, row in enumerate(rows, 2):
        text = _clean(row.get("Sentence") or "")
        try:
            if not text:
                raise BadInputError(f"{path}:{n}", "empty sentence")
            label = normalize_label(row.get("Emotion"), where=f"{path}:{n}")
        except BadInputError as e:
            skips.skip(e)
            continue
        out.append(TextExample(f"{path.stem}:{n}", text, label, path.name))
    return out


def load_aihub263(path: Path, skips: SkipLog) -> list[TextExample]:
    rows = csv.DictReader(io.StringIO(_decode(path)))
    columns = [f"{i}번 감정" for i in range(1, 6)]
    if not rows.fieldnames or "발화문" not in rows.fieldnames or columns[0] not in rows.fieldnames:
        raise BadInputError(path, "expected the columns 발화문 and 1번 감정 .. 5번 감정")
    out = []
    for n, row in enumerate(rows, 2):
        where = f"{path}:{n}"
        text = _clean(row.get("발화문") or "")
        try:
            if not text:
                raise BadInputError(where, "empty sentence")
            votes = Counter(normalize_label(row[c], where=where) for c in columns if row.get(c))
            if not votes:
                raise BadInputError(where, "no annotator emotion")
            (label, top), *rest = votes.most_common()
            if rest and rest[0][1] == top:
                raise BadInputError(where, f"annotators tie ({dict(votes)})")
        except BadInputError as e:
            skips.skip(e)
            continue
        out.append(TextExample(row.get("wav_id") or f"{path.stem}:{n}", text, label, path.name))
    return out


def load_text_corpora(
    root: str | Path, skips: SkipLog, exclude_texts: set[str] | None = None
) -> list[TextExample]:
    """All corpora under ``root``; ``exclude_texts`` drops sentences of an evaluation set."""
    root = Path(root)
    files = sorted(root.glob("*.csv"))
    if not files:
        raise KoemoError(f"{root}: no text corpora (*.csv) found")
    examples: list[TextExample] = []
    for f in files:
        loader = load_aihub263 if f.name.startswith("aihub263") else load_single_turn
        try:
            examples.extend(loader(f, skips))
        except BadInputError as e:
            skips.skip(e)
    if exclude_texts:
        banned = {_clean(t) for t in exclude_texts}
        examples = [e for e in examples if e.text not in banned]
    return examples
