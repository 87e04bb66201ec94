"""The transcript cache: SQLite, one row per (audio content, recogniser settings, noise condition).

Keys hold everything that changes a transcript, so an entry is never stale: the audio's SHA-256
(plus the time span for clips cut from a longer file), the backend's ``cache_key`` (name, decoding
parameters, model checksum, library version) and the noise key (kind, SNR, seed, babble pool).
Each transcript is committed as soon as it exists, in WAL mode, so an interrupted run loses at
most the clip in flight and a re-run resumes where it stopped. File hashes are cached too,
keyed by (path, size, mtime), so re-runs over large datasets do not re-read every file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from koemo.data.manifest import Utterance
from koemo.errors import BadInputError
from koemo.paths import cache_root, sha256_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transcripts (
    audio_key TEXT NOT NULL,
    backend_key TEXT NOT NULL,
    noise_key TEXT NOT NULL,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (audio_key, backend_key, noise_key)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""


def default_cache_path() -> Path:
    return cache_root() / "asr" / "transcripts.sqlite"


class TranscriptCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A long timeout: other koemo processes may be writing to the same cache.
        self.db = sqlite3.connect(str(self.path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "TranscriptCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, audio_key: str, backend_key: str, noise_key: str) -> str | None:
        row = self.db.execute(
            "SELECT text FROM transcripts WHERE audio_key=? AND backend_key=? AND noise_key=?",
            (audio_key, backend_key, noise_key),
        ).fetchone()
        return None if row is None else row[0]

    def put(self, audio_key: str, backend_key: str, noise_key: str, text: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO transcripts VALUES (?, ?, ?, ?, ?)",
                (audio_key, backend_key, noise_key, text, time.time()),
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM transcripts").fetchone()[0]

    def file_sha256(self, path: str | Path, where: str | None = None) -> str:
        """SHA-256 of a file's bytes, remembered while its size and mtime stay the same."""
        path = Path(path)
        try:
            st = path.stat()
        except OSError as e:
            raise BadInputError(where or path, f"cannot read audio file ({e.strerror or e})") from None
        key = str(path.resolve())
        row = self.db.execute("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path=?", (key,)).fetchone()
        if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return row[2]
        digest = sha256_file(path)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", (key, st.st_size, st.st_mtime_ns, digest))
        return digest

    def audio_key(self, utt: Utterance) -> str:
        """The audio's content hash, plus the span when the utterance is part of a longer file."""
        digest = self.file_sha256(utt.audio, where=f"{utt.id} ({utt.audio})")
        if utt.start is None and utt.end is None:
            return digest
        return f"{digest}[{utt.start or 0.0:g}:{'' if utt.end is None else format(utt.end, 'g')}]"


def noise_key(condition, pool_keys: Iterable[str] = ()) -> str:
    """"" for clean audio; otherwise the condition plus, for babble, a digest of the talker pool."""
    if condition is None:
        return ""
    import hashlib

    from koemo.asr.noise import BABBLE_TALKERS

    # "v" is the noise generator's version: bump it whenever koemo.asr.noise changes its output.
    key = {"v": 1, "kind": condition.kind, "snr": condition.snr, "seed": condition.seed}
    if condition.kind == "babble":
        key["talkers"] = BABBLE_TALKERS
        key["pool"] = hashlib.sha256("\n".join(pool_keys).encode("utf-8")).hexdigest()
    return json.dumps(key, sort_keys=True)


__all__ = ["TranscriptCache", "default_cache_path", "noise_key"]
