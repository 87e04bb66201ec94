"""Serving fixtures: a model bundle trained in the test session by koemo's own trainer on real
EmotionTTS features (whisper-base encoder + EmbeddingGemma), the predictor loaded from it, and a
live uvicorn server on a free loopback port.

Kept small for a 2-core machine: 8 clips (2 per emotion) are encoded once per session.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

LABELS = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="session")
def serving_utts(emotiontts_utts):
    """Two clips per emotion from different speakers and sentences, shortest first."""
    picked = []
    for label in LABELS:
        pool = sorted((u for u in emotiontts_utts if u.label == label), key=lambda u: (u.duration, u.id))
        seen_spk, seen_grp = set(), set()
        for u in pool:
            if u.speaker in seen_spk or u.group in seen_grp:
                continue
            picked.append(u)
            seen_spk.add(u.speaker)
            seen_grp.add(u.group)
            if sum(1 for p in picked if p.label == label) == 2:
                break
    assert len(picked) == 8
    return picked


@pytest.fixture(scope="session")
def clip(serving_utts) -> Path:
    """A short real EmotionTTS recording (about 4 s)."""
    return Path(min(serving_utts, key=lambda u: u.duration).audio)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, serving_utts, require_model) -> Path:
    """A bundle written by ``koemo.training.trainer.train_fold`` from real features."""
    from koemo.config import Recipe
    from koemo.data.audio import load_audio
    from koemo.data.splits import Fold
    from koemo.encoders import get_speech_encoder, get_text_encoder
    from koemo.training.data import FeatureData
    from koemo.training.trainer import train_fold

    require_model("whisper-base")
    require_model("embeddinggemma-300m")
    recipe = Recipe()
    recipe.train.epochs = 4
    recipe.train.batch_size = 4
    recipe.train.lr = 1e-3
    speech = get_speech_encoder(recipe.encoders.speech)
    text = get_text_encoder(recipe.encoders.text)
    audio = {u.id: speech.encode(load_audio(u.audio)) for u in serving_utts}
    gold = dict(zip([u.id for u in serving_utts], text.encode([u.text for u in serving_utts])))
    labels = {u.id: u.label for u in serving_utts}
    by_label = {lab: [u.id for u in serving_utts if u.label == lab] for lab in LABELS}
    train = [ids[0] for ids in by_label.values()]
    held = [ids[1] for ids in by_label.values()]
    fold = Fold("serving-test", train=train, valid=held, test=held)
    data = FeatureData(audio, {"gold": gold}, labels, list(LABELS))
    out = tmp_path_factory.mktemp("bundles") / "default"
    encoders = {"speech": {"name": speech.name, "id": speech.id}, "text": {"name": text.name, "id": text.id}}
    train_fold(recipe, fold, data, out_dir=out, encoders=encoders, progress=False)
    assert (out / "bundle.json").is_file()
    return out


@pytest.fixture(scope="session")
def predictor(trained_bundle):
    """The real pipeline: whisper-base ASR, encoders and the trained fusion model, loaded once."""
    from koemo.serving.limits import Limits
    from koemo.serving.loader import load_predictor

    return load_predictor(trained_bundle, asr="whisper-base", limits=Limits(segment_over_s=15))


@pytest.fixture(scope="session")
def app(predictor):
    from koemo.serving.app import create_app

    return create_app(predictor)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a background thread; yields its URL."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        pytest.fail("uvicorn did not start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(app):
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a background thread."""
    with serving(app) as url:
        yield url


def wav_bytes(audio: np.ndarray, sr: int = 16000, subtype: str = "PCM_16") -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


class _FixedWords:
    """A stand-in recogniser: always the same words, and one log line from the worker thread."""

    words = "비밀 문장 SECRET-TRANSCRIPT"

    def transcribe(self, audio):
        import logging

        logging.getLogger("koemo.serving").info("fake ASR on %d samples", len(audio))
        return self.words


def fake_predictor():
    """A Predictor without models (fixed transcript, fixed distribution, angry on top): for tests
    of the HTTP layer that need no real prediction."""
    from koemo.serving.limits import Limits
    from koemo.serving.predictor import Predictor

    return Predictor(
        labels=LABELS, asr=_FixedWords(), speech_encoder=lambda a: np.zeros((4, 8), np.float32),
        text_encoder=lambda t: np.zeros((1, 4), np.float32),
        classify=lambda s, t: (np.array([0.1, 0.2, 0.3, 0.4]), {"audio": 0.5, "text": 0.5}),
        limits=Limits(segment_over_s=0), overlap=False,
    )
