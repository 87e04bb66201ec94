"""AIHub multimodal video dataset (aihub.or.kr dataset 137), the paper's data.

Layout (as read from the authors' public converter): each clip is ``NAME.mp4`` beside
``NAME.json``. The JSON has ``nr_frame`` and ``data``: a mapping from a 1-based frame number
(as a string) to the persons in that frame (a mapping ``person id -> info`` or a list of infos),
each of which may carry ``text.script`` and ``emotion.multimodal.emotion``. An utterance is a
run of consecutive frames in which a person has the same script; its audio spans
``(start-1)/fps`` to ``(end-1)/fps`` of the video's sound track.

The sound track is extracted once per video to 16 kHz mono WAV under the cache (atomically), and
utterances point into it with ``start``/``end``.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from koemo.data.audio import SAMPLE_RATE, load_audio
from koemo.data.labels import normalize_label
from koemo.data.loaders import LOADERS
from koemo.data.manifest import Utterance
from koemo.errors import BadInputError, KoemoError, SkipLog
from koemo.paths import atomic_path, cache_root

DEFAULT_SUBDIR = "aihub_multimodal_video"


def video_fps(video: Path) -> float:
    import av

    try:
        with av.open(str(video)) as c:
            if not c.streams.video:
                raise BadInputError(video, "has no video stream to take the frame rate from")
            rate = c.streams.video[0].average_rate
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BadInputError(video, f"not readable as video ({str(e).splitlines()[0]})") from None
    if not rate:
        raise BadInputError(video, "video has no frame rate")
    return float(rate)


def _persons(frame_value) -> list[tuple[str, dict]]:
    if isinstance(frame_value, dict):
        return [(str(k), v) for k, v in frame_value.items() if isinstance(v, dict)]
    if isinstance(frame_value, list):
        return [(str(i), v) for i, v in enumerate(frame_value) if isinstance(v, dict)]
    return []


def _dig(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def parse_annotation(path: Path) -> list[dict]:
    """Runs of (person, script, emotion) over consecutive frames: ``[{person, script, emotion, start_frame, end_frame}]``."""
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"annotation is not UTF-8 (invalid byte at {e.start})") from None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadInputError(path, f"annotation is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise BadInputError(path, "annotation has no 'data' mapping of frames")
    frames = sorted((int(k), v) for k, v in doc["data"].items() if str(k).isdigit())
    runs: list[dict] = []
    open_runs: dict[str, dict] = {}
    for number, value in frames:
        seen = set()
        for person, info in _persons(value):
            script = _dig(info, "text", "script")
            if not isinstance(script, str) or not script.strip():
                continue
            script = unicodedata.normalize("NFC", " ".join(script.split()))
            emotion = _dig(info, "emotion", "multimodal", "emotion")
            run = open_runs.get(person)
            if run and run["script"] == script and run["end_frame"] == number - 1:
                run["end_frame"] = number
                if not run["emotion"] and emotion:
                    run["emotion"] = emotion
            else:
                run = {"person": person, "script": script, "emotion": emotion,
                       "start_frame": number, "end_frame": number}
                runs.append(run)
                open_runs[person] = run
            seen.add(person)
        for person in list(open_runs):
            if person not in seen:
                del open_runs[person]
    return runs


def extract_soundtrack(video: Path, out_dir: Path) -> Path:
    """The video's sound track as 16 kHz mono WAV, extracted once (atomically) and reused."""
    import soundfile as sf

    target = out_dir / f"{video.stem}.wav"
    if target.exists() and target.stat().st_mtime >= video.stat().st_mtime:
        return target
    audio = load_audio(video, allow_silent=True)
    with atomic_path(target) as tmp:
        sf.write(str(tmp), audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return target


@LOADERS.register("aihub")
def load_aihub(
    root: str | Path, skips: SkipLog, audio_dir: str | Path | None = None, check_audio: bool = True
) -> list[Utterance]:
    root = Path(root)
    annotations = sorted(root.rglob("*.json"))
    if not annotations:
        raise KoemoError(f"{root}: no AIHub clips found (expected NAME.mp4 beside NAME.json)")
    audio_dir = Path(audio_dir) if audio_dir else cache_root() / "audio" / "aihub"
    out: list[Utterance] = []
    for ann in tqdm(annotations, desc="aihub", unit="clip", leave=False):
        video = ann.with_suffix(".mp4")
        try:
            if not video.exists():
                raise BadInputError(ann, f"no video beside the annotation ({video.name} missing)")
            runs = parse_annotation(ann)
            if not runs:
                raise BadInputError(ann, "annotation has no scripted frames")
            fps = video_fps(video)
            wav = extract_soundtrack(video, audio_dir)
            track = load_audio(wav, allow_silent=True) if check_audio else None
        except BadInputError as e:
            skips.skip(e)
            continue
        for i, run in enumerate(runs):
            uid = f"{ann.stem}_{i:03d}"
            start = (run["start_frame"] - 1) / fps
            end = (run["end_frame"] - 1) / fps
            where = f"{ann}#{uid}"
            try:
                label = normalize_label(run["emotion"], where=where)
                if end <= start:
                    raise BadInputError(where, "utterance spans a single frame (zero-length audio)")
                if track is not None:
                    seg = track[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
                    if seg.size == 0:
                        raise BadInputError(where, "utterance lies past the end of the sound track")
                    if float(np.max(np.abs(seg))) < 1e-4:
                        raise BadInputError(where, "audio is all silence (peak below -80 dBFS)")
            except BadInputError as e:
                skips.skip(e)
                continue
            out.append(
                Utterance(
                    id=uid,
                    audio=str(wav),
                    label=label,
                    text=run["script"],
                    speaker=f"{ann.stem.split('_')[0]}:{run['person']}",
                    group=run["script"],
                    duration=round(end - start, 4),
                    dataset="aihub",
                    start=round(start, 4),
                    end=round(end, 4),
                )
            )
    return out
