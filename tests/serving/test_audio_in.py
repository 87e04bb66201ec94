"""Fast checks without the models: upload decoding and limits, browser recordings, VAD."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from koemo.data.audio import load_audio
from koemo.serving.limits import Limits, RejectedAudio, check_wav_complete, decode_audio
from koemo.serving.segment import SegmentConfig, cut, speech_spans
from tests.conftest import tone
from tests.serving.conftest import wav_bytes


def test_complete_and_streaming_wavs_pass():
    data = wav_bytes(tone(1.0))
    check_wav_complete(data, "a.wav")
    # a streaming writer that did not know the length writes 0xFFFFFFFF as the data size
    i = data.index(b"data")
    check_wav_complete(data[: i + 4] + b"\xff\xff\xff\xff" + data[i + 8 :], "s.wav")
    assert len(decode_audio(data, "a.wav", Limits())) == 16000


def test_truncated_wav_names_both_lengths():
    data = wav_bytes(tone(2.0))
    with pytest.raises(RejectedAudio) as e:
        check_wav_complete(data[: len(data) // 4], "cut.wav")
    assert e.value.status == 422
    assert str(e.value).startswith("cut.wav: truncated WAV file (header declares 2.00 s of audio but the file holds 0.50 s)")


@pytest.mark.parametrize(
    "data,status,words",
    [
        (b"", 422, "empty upload"),
        (b"\x00" * 5000, 415, "not a supported audio format"),
        (wav_bytes(np.zeros(0, np.float32)), 422, "zero-length"),
        (wav_bytes(np.full(16000, np.nan, np.float32), subtype="FLOAT"), 422, "NaN"),
    ],
    ids=["empty", "zeros", "no-samples", "nan"],
)
def test_decode_statuses(data, status, words):
    with pytest.raises(RejectedAudio) as e:
        decode_audio(data, "x.wav", Limits())
    assert e.value.status == status and words in e.value.problem


def test_limits_on_size_and_duration():
    data = wav_bytes(tone(3.0))
    with pytest.raises(RejectedAudio) as e:
        decode_audio(data, "big.wav", Limits(max_upload_mb=0.05))
    assert e.value.status == 413 and "limit is 0.05 MB" in e.value.problem
    with pytest.raises(RejectedAudio) as e:
        decode_audio(data, "long.wav", Limits(max_duration_s=2))
    assert e.value.status == 413 and e.value.problem == "audio is 3.0 s long; the limit is 2 s"
    assert len(decode_audio(data, "ok.wav", Limits(max_duration_s=0))) == 48000  # 0 = no limit


@pytest.mark.parametrize("fmt,codec", [("webm", "libopus"), ("ogg", "libopus")])
def test_browser_recordings_decode(fmt, codec):
    """What MediaRecorder uploads (Chromium: webm/opus, Firefox: ogg/opus) decodes through PyAV."""
    av = pytest.importorskip("av")
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=48000, layout="mono")
        samples = tone(1.0, sr=48000)
        for i in range(0, len(samples), 960):
            frame = av.AudioFrame.from_ndarray(samples[None, i : i + 960], format="flt", layout="mono")
            frame.sample_rate = 48000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    audio = decode_audio(buf.getvalue(), f"recording.{fmt}", Limits())
    assert abs(len(audio) - 16000) < 0.1 * 16000


def test_vad_finds_the_utterances_and_keeps_torch_threads(serving_utts):
    threads = torch.get_num_threads()
    a, b = load_audio(serving_utts[0].audio), load_audio(serving_utts[1].audio)
    gap = np.zeros(32000, np.float32)
    audio = np.concatenate([gap, a, gap, gap, b, gap])
    spans = speech_spans(audio)
    assert torch.get_num_threads() == threads  # importing silero_vad sets 1; koemo restores it
    assert 2 <= len(spans) <= 6
    assert spans[0].start >= 1.5 and spans[-1].end <= len(audio) / 16000 - 1.5
    assert all(s.end - s.start <= SegmentConfig().max_segment_s + 0.2 for s in spans)
    total = sum(len(cut(audio, s)) for s in spans) / 16000
    assert total == pytest.approx((len(a) + len(b)) / 16000, rel=0.35)
    assert speech_spans(np.zeros(16000 * 3, np.float32)) == []
    assert speech_spans(np.zeros(0, np.float32)) == []


def test_vad_merges_short_pauses_and_caps_utterances_at_12_s(serving_utts):
    """Two clips 0.3 s apart are one utterance (pause merging); 1.5 s apart, two; six clips with
    short pauses (~30 s of speech) are cut into utterances no longer than the 12 s cap."""
    def trimmed(audio):  # the clip's own speech, without its leading and trailing silence
        spans = speech_spans(audio)
        return audio[int(spans[0].start * 16000):int(spans[-1].end * 16000)]

    clips = [trimmed(load_audio(u.audio)) for u in serving_utts[:6]]
    a, b = clips[0], clips[1]
    assert (len(a) + len(b)) / 16000 < 11.5  # one merged span fits under the cap
    short, long = np.zeros(4800, np.float32), np.zeros(24000, np.float32)
    edge = np.zeros(16000, np.float32)
    merged = speech_spans(np.concatenate([edge, a, short, b, edge]))
    assert len(merged) == 1
    apart = speech_spans(np.concatenate([edge, a, long, b, edge]))
    assert len(apart) == 2 and apart[1].start - apart[0].end > 1.0
    many = np.concatenate([edge] + [x for c in clips for x in (c, short)] + [edge])
    spans = speech_spans(many)
    cap = SegmentConfig().max_segment_s
    assert len(spans) >= len(many) / 16000 / cap and all(s.end - s.start <= cap + 0.05 for s in spans)


def test_a_long_stretch_of_speech_is_cut_at_the_cap(monkeypatch):
    """Speech with no pause (a detector that hears one voice throughout, cutting only where it is
    told the utterance is too long, as silero-vad does): every utterance stays under 12 s."""
    import koemo.serving.segment as segment

    vad = segment._silero()

    def continuous(wav, model, sampling_rate, max_speech_duration_s, **kw):
        n, step = len(wav), int(min(max_speech_duration_s, 1e6) * sampling_rate)
        return [{"start": s, "end": min(s + step, n)} for s in range(0, n, step)]

    monkeypatch.setattr(vad, "get_speech_timestamps", continuous)
    spans = speech_spans(np.zeros(30 * 16000, np.float32) + 0.1)
    cap = SegmentConfig().max_segment_s
    assert len(spans) == 3 and all(s.end - s.start <= cap for s in spans)
    assert spans[0].start == 0.0 and spans[-1].end == 30.0


def test_cut_takes_the_span_to_the_sample():
    from koemo.serving.segment import Span, cut

    audio = np.arange(32000, dtype=np.float32)
    assert cut(audio, Span(0.0, 0.5)).tolist() == list(range(8000))
    assert cut(audio, Span(1.5, 3.0)).tolist() == list(range(24000, 32000))  # clipped at the end
