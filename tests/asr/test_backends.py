"""The offline recognisers on real speech and on the inputs that break recognisers."""

import numpy as np
import pytest
import soundfile as sf

from koemo.asr import ASR_BACKENDS, backend_names, make_backend
from koemo.asr.metrics import normalize, score
from koemo.asr.transcribe import transcribe_one
from koemo.data.audio import load_audio
from koemo.data.manifest import Utterance
from koemo.errors import BadInputError, KoemoError, ModelNotInstalledError

pytestmark = pytest.mark.slow

# Seven clips, ~36 s: the last one (불국사와 석굴암은...) starts after the 30 s mark.
LONG_CLIPS = ["nea00001", "nea00002", "nea00003", "nea00004", "nea00101", "nea00102", "nea00005"]


@pytest.fixture(scope="module")
def whisper(require_model):
    require_model("whisper-base")
    return make_backend("whisper-base")


@pytest.fixture(scope="module")
def vosk(require_model):
    require_model("vosk-ko")
    return make_backend("vosk-ko")


@pytest.fixture(scope="module")
def by_id(emotiontts_utts):
    return {u.id: u for u in emotiontts_utts}


def test_whisper_base_transcribes_an_emotiontts_clip(whisper, by_id):
    utt = by_id["nea00004"]  # 현재 본 사건과 관련하여 내부 감사를 진행하고 있습니다.
    text = transcribe_one(whisper, utt)
    assert score([utt.text], [text]).cer < 0.3


def test_any_whisper_by_local_directory(whisper, by_id, require_model):
    local = make_backend(f"whisper:{require_model('whisper-base')}")
    assert local.name.startswith("whisper:")
    audio = load_audio(by_id["nea00003"].audio)
    assert local.transcribe(audio) == whisper.transcribe(audio)
    # Same weights and settings, another name: the cache keys stay apart only by name.
    assert local.params() == whisper.params() and local.cache_key != whisper.cache_key


def test_wrong_sample_rate_is_resampled(whisper, by_id, tmp_path):
    utt = by_id["nea00004"]
    audio = load_audio(utt.audio)
    import soxr

    path = tmp_path / "44k.wav"
    sf.write(str(path), soxr.resample(audio, 16000, 44100), 44100)
    text = transcribe_one(whisper, Utterance("44k", str(path), "neutral"))
    assert score([utt.text], [text]).cer < 0.3


def _long_clip(by_id):
    parts = [load_audio(by_id[i].audio) for i in LONG_CLIPS]
    assert sum(map(len, parts[:-1])) > 30 * 16000  # the last sentence starts after 30 s
    return np.concatenate(parts), " ".join(by_id[i].text for i in LONG_CLIPS)


@pytest.mark.parametrize("backend,max_cer", [("whisper", 0.3), ("vosk", 0.45)])
def test_clips_longer_than_30_s_are_transcribed_whole(backend, max_cer, by_id, request):
    recogniser = request.getfixturevalue(backend)
    audio, ref = _long_clip(by_id)
    text = recogniser.transcribe(audio)
    assert score([ref], [text]).cer < max_cer
    assert "불국사" in normalize(text).replace(" ", "")  # from the sentence after the 30 s mark


@pytest.mark.parametrize("backend", ["whisper", "vosk"])
def test_silence_and_a_noise_floor_give_empty_text(backend, request):
    recogniser = request.getfixturevalue(backend)
    assert recogniser.transcribe(np.zeros(16000 * 2, dtype=np.float32)) == ""
    assert recogniser.transcribe(np.zeros(0, dtype=np.float32)) == ""
    # -60 dBFS hiss is above the silence cut-off, so the model itself runs and must find nothing.
    hiss = (1e-3 * np.random.default_rng(0).standard_normal(16000 * 3)).astype(np.float32)
    assert recogniser.transcribe(hiss) == ""


def test_vosk_transcribes_an_emotiontts_clip(vosk, by_id):
    utt = by_id["nea00004"]
    assert score([utt.text], [transcribe_one(vosk, utt)]).cer < 0.5


def test_corrupt_file_names_the_utterance_and_the_file(whisper, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(BadInputError, match=r"^u7 \(.*broken\.wav\): not readable as audio"):
        transcribe_one(whisper, Utterance("u7", str(bad), "neutral"))
    with pytest.raises(BadInputError, match=r"^u8 \(.*nothere\.wav\): file not found"):
        transcribe_one(whisper, Utterance("u8", str(tmp_path / "nothere.wav"), "neutral"))


@pytest.mark.parametrize("name", ["whisper-base", "vosk-ko", "whisper-base-noguards"])
def test_model_not_installed_says_how_to_install(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KOEMO_MODELS", str(tmp_path / "no-models"))
    model = "whisper-base" if name.startswith("whisper") else name
    with pytest.raises(ModelNotInstalledError, match=f"install it with: koemo models install {model}$"):
        make_backend(name)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(KoemoError, match="unknown ASR backend 'kakao'; known: .*vosk-ko.*whisper-base"):
        make_backend("kakao")
    assert "whisper:<dir-or-name>" in backend_names() and "google" in ASR_BACKENDS


def test_whisper_model_paths_that_are_not_models(tmp_path):
    with pytest.raises(KoemoError, match="needs a model directory or hub name"):
        make_backend("whisper:")
    with pytest.raises(KoemoError, match=r"^\./no/such/dir: model directory not found"):
        make_backend("whisper:./no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KoemoError, match=r"empty: not a CTranslate2 Whisper model directory \(no model\.bin\)"):
        make_backend(f"whisper:{tmp_path / 'empty'}")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(KoemoError, match=r"file\.bin: not a directory"):
        make_backend(f"whisper:{tmp_path / 'file.bin'}")


def test_cache_key_changes_with_the_guards(whisper, require_model):
    raw = make_backend("whisper-base-noguards")
    assert raw.params()["vad_filter"] is False and whisper.params()["vad_filter"] is True
    assert raw.cache_key != whisper.cache_key
    assert whisper.params()["model_sha256"] == "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"


def test_loading_a_ctranslate2_whisper_keeps_torchs_thread_count(require_model, monkeypatch):
    """CTranslate2 sets the process's OpenMP thread count when it loads a model, and torch reads
    that count: a ``--shard`` process started with ``OMP_NUM_THREADS=1`` trained on two spinning
    threads after loading Whisper (two such processes on 2 cores: 7x slower each). The
    recogniser, the shared pass and the ct2 speech encoder each put torch's count back."""
    require_model("whisper-base")
    import torch

    from koemo.encoders.one_pass import SharedPassBackend
    from koemo.encoders.whisper import WhisperBaseEncoder

    monkeypatch.setenv("KOEMO_THREADS", "2")  # the ct2 encoder's own count, not torch's
    before = torch.get_num_threads()
    try:
        for load in (lambda: make_backend("whisper-base"), SharedPassBackend,
                     lambda: WhisperBaseEncoder(backend="ct2")._ct2_model()):
            torch.set_num_threads(1)
            load()
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
