"""The feature store: each utterance's encoder output, cached on disk once, read memory-mapped.

Layout under ``root`` (default ``<cache>/features``)::

    speech/<encoder>-<sha1(encoder id)[:12]>/encoder.json     # the full id, dim, frame rate
    speech/<encoder>-<...>/<k[:2]>/<k>.npy                     # k = sha256(audio sha256 | start | end)
    text/<encoder>-<...>/<k[:2]>/<k>.npy                       # k = sha256(text, stripped)
    audio-sha256.json                                          # memo: path|size|mtime -> file sha256

Keys hold everything that changes an entry (the encoder id carries backend, layer, dtype and the
weights' checksum; the content key the audio bytes and span, or the text itself), so a stale entry
cannot be read. Text entries are shared by every text source: an ASR transcript equal to the gold
text is stored once. Arrays are float16 ``[T, dim]`` (``[1, dim]`` for sentence vectors), each
written to a temporary file and renamed, so an interrupted extraction loses at most the utterance
in progress and a re-run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from koemo.data.manifest import Utterance
from koemo.errors import BadInputError, KoemoError, SkipLog
from koemo.paths import atomic_path, atomic_write_text, cache_root, sha256_file
from koemo.sources import TextSource

log = logging.getLogger("koemo")
TEXT_BATCH = 32
FLOAT16_MAX = 65504.0


def store_for(recipe) -> "FeatureStore":
    """The feature store a recipe reads (``cache_dir`` or the cache root)."""
    return FeatureStore(Path(cache_root(recipe.cache_dir)) / "features" if recipe.cache_dir else None)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-60:]


class FeatureStore:
    """``FeatureStore(root=None)``: ``speech(...)`` / ``text(...)`` return ``{utt id: float16
    array [T, dim]}`` (memory-mapped), extracting what is missing."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_root() / "features"
        self._audio_memo: dict[str, str] | None = None
        self._memo_dirty = False
        self.hits = 0  # entries found on disk by the last call
        self.extracted = 0  # entries computed by the last call

    # ------------------------------------------------------------------ keys and paths
    def encoder_dir(self, kind: str, encoder) -> Path:
        digest = hashlib.sha1(encoder.id.encode()).hexdigest()[:12]
        folder = self.root / kind / f"{_slug(encoder.id.split('|')[0])}-{digest}"
        meta = folder / "encoder.json"
        if not meta.is_file():
            atomic_write_text(meta, json.dumps({
                "id": encoder.id, "kind": kind, "dim": encoder.dim, "frame_rate": encoder.frame_rate,
                "sentence_vector": bool(getattr(encoder, "sentence_vector", False)),
                "finetunable": encoder.finetunable, "dtype": "float16"}, indent=1, ensure_ascii=False))
        return folder

    def audio_sha256(self, path: str | Path) -> str:
        """SHA-256 of an audio file's bytes, memoised by path, size and mtime."""
        p = Path(path)
        if self._audio_memo is None:
            try:
                self._audio_memo = json.loads((self.root / "audio-sha256.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._audio_memo = {}
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self._audio_memo:
            self._audio_memo[key] = sha256_file(p)
            self._memo_dirty = True
        return self._audio_memo[key]

    def _save_memo(self) -> None:
        if self._memo_dirty and self._audio_memo is not None:
            atomic_write_text(self.root / "audio-sha256.json", json.dumps(self._audio_memo, indent=0))
            self._memo_dirty = False

    @staticmethod
    def speech_key(audio_sha: str, start: float | None, end: float | None) -> str:
        return hashlib.sha256(f"{audio_sha}|{start}|{end}".encode()).hexdigest()

    @staticmethod
    def text_key(text: str) -> str:
        return hashlib.sha256((text or "").strip().encode("utf-8")).hexdigest()

    @staticmethod
    def _entry(folder: Path, key: str) -> Path:
        return folder / key[:2] / f"{key}.npy"

    def speech_path(self, folder: Path, utt: Utterance, transform=None) -> Path:
        """Where ``utt``'s entry lives in an encoder's ``folder`` (:meth:`encoder_dir`), present or not."""
        try:
            sha = self.audio_sha256(utt.audio)
        except OSError as e:
            raise BadInputError(f"{utt.id} ({utt.audio})", f"cannot read audio ({e.strerror or e})") from None
        key = self.speech_key(sha, utt.start, utt.end)
        if transform is not None:
            key = hashlib.sha256(f"{key}|{transform.key}".encode()).hexdigest()
        return self._entry(folder, key)

    def put(self, path: Path, array: np.ndarray, where: str) -> None:
        """Write one entry (float16, atomically) computed elsewhere (:func:`koemo.encoders.one_pass.fill`);
        :meth:`flush` afterwards keeps the audio hashes :meth:`speech_path` computed."""
        self._write(path, array, where)

    def flush(self) -> None:
        """Persist the memo of audio hashes (once, not per entry: it holds every file of the corpus)."""
        self._save_memo()

    @staticmethod
    def _write(path: Path, array: np.ndarray, where: str) -> None:
        a = np.asarray(array, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise BadInputError(where, "encoder output has NaN or infinite values")
        big = float(np.abs(a).max()) if a.size else 0.0
        if big > FLOAT16_MAX:
            raise BadInputError(where, f"encoder output {big:.3g} does not fit float16")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, a.astype(np.float16))

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        return np.load(path, mmap_mode="r")

    # ------------------------------------------------------------------ speech
    def speech(self, encoder_name: str, utts: list[Utterance], extract_missing: bool = True, *,
               layer: int | str | None = None, skips: SkipLog | None = None, progress: bool = True,
               transform=None, **options) -> dict[str, np.ndarray]:
        """``{utt id: float16 [T, dim]}`` for the speech encoder ``encoder_name``.

        ``transform``: an augmentation (``transform(utt, audio) -> audio`` with a ``key`` naming
        it, :class:`koemo.training.augment.AudioTransform`) applied before encoding; its entries
        are keyed by the transform too.

        Missing entries are extracted (unless ``extract_missing`` is False: then only cached
        ones are returned and a warning gives the count). A bad utterance raises a one-line
        :class:`BadInputError`, or is skipped into ``skips`` when one is given.
        """
        from koemo.encoders import get_speech_encoder

        enc = get_speech_encoder(encoder_name, layer=layer, **options)
        folder = self.encoder_dir("speech", enc)
        out: dict[str, np.ndarray] = {}
        todo: list[tuple[Utterance, Path]] = []
        for u in utts:
            try:
                path = self.speech_path(folder, u, transform)
            except BadInputError as e:
                self._fail(e, skips)
                continue
            if path.is_file():
                out[u.id] = self._read(path)
            else:
                todo.append((u, path))
        self._save_memo()
        self.hits, self.extracted = len(out), 0
        if todo and not extract_missing:
            log.warning("%s: %d of %d utterances not in the feature store (run: koemo features extract --encoder %s)",
                        encoder_name, len(todo), len(utts), encoder_name)
            return out
        if todo:
            from tqdm import tqdm

            desc = f"features {encoder_name}" + (f" ({getattr(transform, 'label', 'transformed')})" if transform else "")
            arrays = _speech_arrays(enc, (encoder_name, layer, options), todo, transform)
            for (u, path), got in tqdm(arrays, total=len(todo), desc=desc, unit="utt", disable=not progress):
                where = f"{u.id} ({u.audio})"
                try:
                    if isinstance(got, BadInputError):
                        raise got
                    self._write(path, got, where)
                except BadInputError as e:
                    self._fail(e, skips)
                    continue
                out[u.id] = self._read(path)
                self.extracted += 1
        return {u.id: out[u.id] for u in utts if u.id in out}

    # ------------------------------------------------------------------ text
    def text(self, encoder_name: str, utts: list[Utterance], source: str = "gold",
             extract_missing: bool = True, *, layer: int | None = None, skips: SkipLog | None = None,
             progress: bool = True, **options) -> dict[str, np.ndarray]:
        """``{utt id: float16 [T, dim]}`` of each utterance's ``source`` text (``gold`` or
        ``asr:<backend>[@noise]``) under the text encoder ``encoder_name``; ``[1, dim]`` for
        sentence-vector encoders and for empty text (a zero vector)."""
        from koemo.encoders import get_text_encoder

        enc = get_text_encoder(encoder_name, layer=layer, **options)
        folder = self.encoder_dir("text", enc)
        out: dict[str, np.ndarray] = {}
        missing: dict[str, tuple[str, Path, list[str]]] = {}  # key -> (text, path, utt ids)
        for u in utts:
            try:
                text = u.text_for(source)
            except BadInputError as e:
                self._fail(e, skips)
                continue
            key = self.text_key(text)
            path = self._entry(folder, key)
            if key in missing:
                missing[key][2].append(u.id)
            elif path.is_file():
                out[u.id] = self._read(path)
            else:
                missing[key] = (text, path, [u.id])
        self.hits, self.extracted = len(out), 0
        if missing and not extract_missing:
            n = sum(len(v[2]) for v in missing.values())
            log.warning("%s/%s: %d of %d utterances not in the feature store (run: koemo features extract "
                        "--encoder %s --text-source %s)", encoder_name, source, n, len(utts), encoder_name, source)
            return out
        if missing:
            from tqdm import tqdm

            items = list(missing.values())
            truncated_before = enc.truncated
            with tqdm(total=len(items), desc=f"features {encoder_name} [{source}]", unit="text",
                      disable=not progress) as bar:
                batches = [[(t, f"{ids[0]} ({source} text)") for t, _, ids in items[start : start + TEXT_BATCH]]
                           for start in range(0, len(items), TEXT_BATCH)]
                for i, got in _text_arrays(enc, (encoder_name, layer, options), batches):
                    batch = items[i * TEXT_BATCH : (i + 1) * TEXT_BATCH]
                    wheres = [w for _, w in batches[i]]
                    if isinstance(got, BadInputError):
                        self._fail(got, skips)
                        bar.update(len(batch))
                        continue
                    arrays = got
                    for (text, path, ids), arr, where in zip(batch, arrays, wheres):
                        try:
                            self._write(path, arr, where)
                        except BadInputError as e:
                            self._fail(e, skips)
                            continue
                        for uid in ids:
                            out[uid] = self._read(path)
                        self.extracted += 1
                    bar.update(len(batch))
            if enc.truncated > truncated_before:
                log.warning("%s: %d texts were longer than %s tokens and truncated", encoder_name,
                            enc.truncated - truncated_before, enc.max_tokens)
        return {u.id: out[u.id] for u in utts if u.id in out}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _fail(error: BadInputError, skips: SkipLog | None) -> None:
        if skips is None:
            raise error
        skips.skip(error)

    def list(self) -> list[dict]:
        """What the store holds: one row per encoder directory."""
        rows = []
        for kind in ("speech", "text"):
            for folder in sorted((self.root / kind).glob("*")) if (self.root / kind).is_dir() else []:
                meta_path = folder / "encoder.json"
                if not meta_path.is_file():
                    continue
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                files = list(folder.glob("*/*.npy"))
                rows.append({"kind": kind, "id": meta["id"], "dim": meta["dim"], "entries": len(files),
                             "mb": round(sum(f.stat().st_size for f in files) / 1e6, 1), "path": str(folder)})
        return rows


# --- extraction here, or on Ray actors that build the encoder once (``--ray``) -----------------
def _speech_arrays(enc, spec: tuple, todo: list, transform) -> Iterator[tuple[tuple, object]]:
    """((utt, path), float32 array or the BadInputError) per entry to extract, in this process or
    (inside :func:`koemo.distributed.engine`) on Ray actors; the caller writes them."""
    from koemo import distributed

    if distributed.active():
        factory = partial(_speech_actor, *spec, transform)
        yield from distributed.map_actors(factory, todo, _encode_speech, plugins=distributed.plugin_modules(enc))
        return
    for item in todo:
        yield item, _encode_speech((enc, transform), item)


def _speech_actor(name: str, layer, options: dict, transform):
    from koemo.encoders import get_speech_encoder

    return get_speech_encoder(name, layer=layer, **options), transform


def _encode_speech(state, item):
    from koemo.data.audio import load_audio

    (enc, transform), (u, _) = state, item
    where = f"{u.id} ({u.audio})"
    try:
        audio = load_audio(u.audio, start=u.start, end=u.end, allow_silent=True, name=where)
        if transform is not None:
            audio = transform(u, audio)
        return np.asarray(enc.encode(audio, where=where), dtype=np.float32)
    except BadInputError as e:
        return e


def _text_arrays(enc, spec: tuple, batches: list[list[tuple[str, str]]]) -> Iterator[tuple[int, object]]:
    """(batch number, its arrays or the BadInputError) per batch of (text, where); Ray actors'
    truncation counts are added to ``enc.truncated``."""
    from koemo import distributed

    if distributed.active():
        factory = partial(_text_actor, *spec)
        for (i, _), got in distributed.map_actors(factory, list(enumerate(batches)), _encode_texts,
                                                  plugins=distributed.plugin_modules(enc)):
            if not isinstance(got, BadInputError):
                got, truncated = got
                enc.truncated += truncated
            yield i, got
        return
    for i, batch in enumerate(batches):
        got = _encode_texts(enc, (i, batch))
        yield i, got if isinstance(got, BadInputError) else got[0]


def _text_actor(name: str, layer, options: dict):
    from koemo.encoders import get_text_encoder

    return get_text_encoder(name, layer=layer, **options)


def _encode_texts(enc, item):
    before = enc.truncated
    try:
        arrays = enc.encode([t for t, _ in item[1]], where=[w for _, w in item[1]])
    except BadInputError as e:
        return e
    return [np.asarray(a, dtype=np.float32) for a in arrays], enc.truncated - before


def check_sources(utts: list[Utterance], sources: list[str]) -> None:
    """Fail early, with the command to run, when a text source has no transcripts at all."""
    for s in sources:
        if s != "gold" and not any(s in u.transcripts for u in utts):
            raise KoemoError(f"no utterance has a '{s}' transcript; run: {TextSource.parse(s).transcribe_command()}")
