"""The AIHub 137 loader on a tiny fixture built in the published layout (mp4 + json)."""

import json

import numpy as np
import pytest

from koemo.data.audio import SAMPLE_RATE, load_audio
from koemo.data.loaders import LOADERS
from koemo.data.loaders.aihub import parse_annotation
from koemo.errors import SkipLog

from tests.conftest import tone

FPS = 10


def make_clip(path, seconds=3.0, silent_from=None):
    """A few-second mp4 with a video track (FPS frames/s) and a 16 kHz mono AAC sound track."""
    av = pytest.importorskip("av")
    audio = tone(seconds)
    if silent_from is not None:
        audio[int(silent_from * SAMPLE_RATE):] = 0.0
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i % 255, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        for i in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, i:i + 1024], format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode(None):
            out.mux(packet)


def person(script, emotion):
    return {"text": {"script": script}, "emotion": {"multimodal": {"emotion": emotion}}}


def annotation(frames: dict) -> dict:
    return {"nr_frame": max(int(k) for k in frames), "data": frames}


@pytest.fixture
def aihub_root(tmp_path):
    root = tmp_path / "aihub"
    root.mkdir()
    make_clip(root / "clip_001.mp4")
    frames = {}
    for f in range(1, 11):  # frames 1-10: person A, happy
        frames[str(f)] = {"A": person("오늘 정말 기분 좋다", "Happy")}
    for f in range(11, 21):  # frames 11-20: person B, sad (label in another case)
        frames[str(f)] = {"B": person("너무 슬퍼", "SAD")}
    for f in range(21, 26):  # frames 21-25: unknown label -> skipped with a message
        frames[str(f)] = {"A": person("음", "bored")}
    (root / "clip_001.json").write_text(json.dumps(annotation(frames), ensure_ascii=False), encoding="utf-8")
    (root / "orphan.json").write_text(json.dumps(annotation({"1": {"A": person("x", "happy")}})), encoding="utf-8")
    return root


def test_parse_runs(aihub_root):
    runs = parse_annotation(aihub_root / "clip_001.json")
    assert [(r["person"], r["start_frame"], r["end_frame"], r["emotion"]) for r in runs] == [
        ("A", 1, 10, "Happy"), ("B", 11, 20, "SAD"), ("A", 21, 25, "bored")]


def test_loader_extracts_utterances(aihub_root, tmp_path):
    skips = SkipLog()
    utts = LOADERS.get("aihub")(aihub_root, skips, audio_dir=tmp_path / "audio")
    assert [(u.label, u.text) for u in utts] == [("happy", "오늘 정말 기분 좋다"), ("sad", "너무 슬퍼")]
    first, second = utts
    # (start-1)/fps .. (end-1)/fps
    assert first.start == 0.0 and first.end == pytest.approx(0.9)
    assert second.start == pytest.approx(1.0) and second.end == pytest.approx(1.9)
    assert first.speaker != second.speaker
    audio = load_audio(first.audio, start=first.start, end=first.end)
    assert abs(len(audio) - 0.9 * SAMPLE_RATE) < 0.02 * SAMPLE_RATE
    problems = sorted(str(e) for e in skips.skipped)
    assert any("unknown emotion label 'bored'" in p and "clip_001.json#clip_001_002" in p for p in problems)
    assert any("orphan.json: no video beside the annotation" in p for p in problems)


def test_broken_annotation(tmp_path):
    root = tmp_path / "aihub"
    root.mkdir()
    make_clip(root / "bad.mp4", seconds=1.0)
    (root / "bad.json").write_text("{not json", encoding="utf-8")
    skips = SkipLog()
    with pytest.raises(Exception, match="no usable"):
        from koemo.config import Recipe
        from koemo.data.prepare import prepare

        recipe = Recipe(name="t")
        recipe.data.dataset, recipe.data.root, recipe.data.label_set = "aihub", str(root), "paper6"
        prepare(recipe)
    utts = LOADERS.get("aihub")(root, skips, audio_dir=tmp_path / "a")
    assert utts == [] and "bad.json: annotation is not valid JSON" in str(skips.skipped[0])
