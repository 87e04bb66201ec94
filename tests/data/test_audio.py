import numpy as np
import pytest
import soundfile as sf

from koemo.data.audio import SAMPLE_RATE, load_audio
from koemo.errors import BadInputError

from tests.conftest import tone


def test_resamples_and_downmixes(tmp_path):
    stereo = np.stack([tone(1.0, 22050), tone(1.0, 22050)], axis=1)
    path = tmp_path / "a.wav"
    sf.write(str(path), stereo, 22050)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - SAMPLE_RATE) <= 2


def test_span(write_wav):
    path = write_wav("a.wav", seconds=2.0)
    assert len(load_audio(path, start=0.5, end=1.5)) == SAMPLE_RATE


@pytest.mark.parametrize("fmt,suffix", [("FLAC", ".flac"), ("MP3", ".mp3")])
def test_other_formats(tmp_path, fmt, suffix):
    path = tmp_path / f"a{suffix}"
    sf.write(str(path), tone(1.0, 44100), 44100, format=fmt)
    audio = load_audio(path)
    assert abs(len(audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE


def test_m4a_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        samples = tone(1.0)
        for i in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, i : i + 1024], format="flt", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    audio = load_audio(path)
    assert abs(len(audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE and np.abs(audio).max() > 0.05


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.wav"
    with pytest.raises(BadInputError, match=r"none\.wav: file not found"):
        load_audio(missing)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match=r"empty\.wav: empty file \(0 bytes\)"):
        load_audio(empty)
    fake = tmp_path / "fake.wav"
    fake.write_text("this is a text file renamed to .wav")
    with pytest.raises(BadInputError, match=r"fake\.wav: not readable as audio"):
        load_audio(fake)
    with pytest.raises(BadInputError, match="uploaded audio>: not readable as audio"):
        load_audio(b"\x00\x01garbage")


def test_silence(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(str(path), np.zeros(8000, dtype=np.float32), 16000)
    with pytest.raises(BadInputError, match="all silence"):
        load_audio(path)
    assert len(load_audio(path, allow_silent=True)) == 8000


def test_audio_shorter_than_one_output_sample_is_refused_by_name(tmp_path):
    """5 samples at 192 kHz resample to no sample at 16 kHz: a clear error, not numpy's."""
    short = tmp_path / "blip.wav"
    sf.write(short, np.full(5, 0.5, dtype=np.float32), 192000)
    with pytest.raises(BadInputError, match=r"blip\.wav: too short: 5 samples at 192000 Hz is less than one "
                                            r"sample at 16000 Hz"):
        load_audio(short)
