"""What ``speech_spans`` does after silero has spoken: the pause-merging rule at its exact
boundaries, the 12 s cap, the rounding, and what it asks silero for; fed synthetic VAD output so
each boundary is hit exactly. Plus the shared model's loading. Written for the surviving mutants
of ``koemo/serving/segment.py`` (docs/testing.md)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from koemo.serving import segment
from koemo.serving.segment import SegmentConfig, Span, speech_spans

SR = 16_000


class FakeSilero:
    """``get_speech_timestamps`` returning fixed sample stamps, recording how it was called."""

    def __init__(self, stamps):
        self.stamps, self.calls = stamps, []

    def get_speech_timestamps(self, wav, model, **kwargs):
        self.calls.append((wav, kwargs))
        return [{"start": a, "end": b} for a, b in self.stamps]


class FakeModel:
    resets = 0

    def reset_states(self):
        FakeModel.resets += 1


@pytest.fixture
def vad(monkeypatch):
    def install(stamps_s):
        fake = FakeSilero([(round(a * SR), round(b * SR)) for a, b in stamps_s])
        monkeypatch.setattr(segment, "_silero", lambda: fake)
        monkeypatch.setattr(segment, "_vad_model", lambda: FakeModel())
        return fake
    return install


AUDIO = np.zeros(SR * 30, np.float32)


def test_pauses_shorter_than_the_gap_merge_and_a_pause_of_exactly_the_gap_does_not(vad):
    cfg = SegmentConfig(merge_gap_s=0.5)
    vad([(1.0, 2.0), (2.25, 3.0), (3.5, 4.0)])  # pauses of 0.25 s and exactly 0.5 s
    assert speech_spans(AUDIO, cfg) == [Span(1.0, 3.0), Span(3.5, 4.0)]


def test_merging_stops_at_the_cap_and_a_merge_of_exactly_the_cap_is_allowed(vad):
    cfg = SegmentConfig(merge_gap_s=0.8, max_segment_s=4.0)
    vad([(2.0, 4.0), (4.5, 6.0), (6.5, 7.0)])  # 2-6 is exactly 4 s: merged; 2-7 would be 5 s
    assert speech_spans(AUDIO, cfg) == [Span(2.0, 6.0), Span(6.5, 7.0)]


def test_without_a_merge_gap_every_span_stays(vad):
    vad([(1.0, 2.0), (2.1, 3.0)])
    assert speech_spans(AUDIO, SegmentConfig(merge_gap_s=0.0)) == [Span(1.0, 2.0), Span(2.1, 3.0)]


def test_span_times_are_rounded_to_milliseconds(vad):
    fake = vad([])
    fake.stamps = [(16_001, 32_009)]  # 1.0000625 s, 2.0005625 s
    assert speech_spans(AUDIO) == [Span(1.0, 2.001)]


def test_silero_is_asked_with_the_configs_settings_on_float32(vad):
    fake = vad([])
    cfg = SegmentConfig(threshold=0.3, min_speech_ms=120, min_silence_ms=300, pad_ms=40, max_segment_s=9.0)
    FakeModel.resets = 0
    assert speech_spans(np.zeros(SR, np.float64), cfg) == []
    (wav, kwargs), = fake.calls
    assert wav.dtype == torch.float32 and wav.shape == (SR,)
    assert kwargs == {"threshold": 0.3, "sampling_rate": SR, "min_speech_duration_ms": 120,
                      "max_speech_duration_s": 9.0, "min_silence_duration_ms": 300, "speech_pad_ms": 40}
    assert FakeModel.resets == 1  # the recurrent state is cleared for the next caller
    speech_spans(np.zeros(1, np.float32))  # one sample is still audio to look at
    assert len(fake.calls) == 2
    assert speech_spans(np.zeros(0, np.float32)) == [] and len(fake.calls) == 2  # nothing: no VAD run


def test_the_bundled_model_is_loaded_once_as_torchscript_without_deprecation_noise(monkeypatch):
    monkeypatch.setattr(segment, "_model", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        first = segment._vad_model()
    assert isinstance(first, torch.jit.ScriptModule) and not first.training
    assert segment._vad_model() is first
