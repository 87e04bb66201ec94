"""A user's own data (KEMDy19/20, in-house recordings) as a CSV or JSONL manifest.

Required columns: ``audio``, ``label``, ``text``; optional: ``id`` (default: the audio file's
stem), ``speaker``, ``group`` (default: the normalised text, so one sentence is one group),
``start``/``end``, and ``asr:<source>`` transcript columns. Relative audio paths are resolved
against the manifest's folder. Labels may use any alias (``Happiness``, ``기쁨``).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from koemo.data.labels import normalize_label
from koemo.data.loaders import LOADERS
from koemo.data.loaders.common import checked_duration
from koemo.data.manifest import Utterance, read_manifest
from koemo.errors import BadInputError, SkipLog


@LOADERS.register("manifest")
def load_generic(root: str | Path, skips: SkipLog, check_audio: bool = True) -> list[Utterance]:
    path = Path(root)
    rows = read_manifest(path, skips=skips, default_ids=True)
    out = []
    for utt in tqdm(rows, desc=path.name, unit="utt", leave=False):
        where = f"{path}#{utt.id}"
        try:
            audio = Path(utt.audio)
            if not audio.is_absolute():
                audio = (path.parent / audio).resolve()
            utt.audio = str(audio)
            utt.label = normalize_label(utt.label, where=where)
            utt.text = " ".join(utt.text.split())
            if not utt.text:
                raise BadInputError(where, "missing transcript (the text column is empty)")
            utt.speaker = utt.speaker or "unknown"
            utt.group = utt.group or utt.text
            utt.dataset = utt.dataset or "manifest"
            if check_audio:
                utt.duration = round(checked_duration(audio, utt.start, utt.end), 4)
        except BadInputError as e:
            skips.skip(e)
            continue
        out.append(utt)
    return out

