"""The shared Whisper pass (koemo.asr.shared_pass): faster-whisper's per-window guards, re-implemented,
checked against a scripted fake CTranslate2 model (no weights), plus one real clip (slow)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from koemo.asr.shared_pass import (
    DecodeOptions,
    WindowDecoder,
    compression_ratio,
    generate_with_fallback,
    is_no_speech,
    shares_pass,
    split_segments,
)

EOT, TS = 50, 100  # token ids: < EOT text, >= TS timestamps (TS + k = k * 0.02 s)
WORDS = dict(enumerate(["안녕", "하세요", "오늘", "날씨", "가", "좋네요", "정말", "네"]))


class FakeTokenizer:
    sot_sequence = (60, 61, 62)
    timestamp_begin = TS
    eot = EOT

    def decode(self, tokens):
        return "".join(" " + WORDS[t] for t in tokens if t < EOT)


@dataclass
class Result:
    sequences_ids: list
    scores: list
    no_speech_prob: float = 0.0


def result(tokens, avg_logprob=-0.2, no_speech=0.0):
    """A CTranslate2-like result whose recovered average log-probability is ``avg_logprob``."""
    return Result([list(tokens)], [avg_logprob * (len(tokens) + 1) / max(len(tokens), 1)], no_speech)


class FakeModel:
    """``generate`` answers from a script, one result per call, and records each call's options."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls = []

    def generate(self, encoder_output, prompts, **kw):
        self.calls.append({"encoder_output": encoder_output, "prompt": prompts[0], **kw})
        return [self.script.pop(0)]


SPEECH = [TS + 0, 0, 1, TS + 50, TS + 50, 2, 3, 4, 5, TS + 150]  # two segments, single timestamp ending
REPETITIVE = [TS + 0] + [6] * 40 + [TS + 150]  # 정말 x 40: compresses far beyond 2.4
OPTS = DecodeOptions()


def decode(tokens):
    return FakeTokenizer().decode(tokens)


def test_compression_ratio_is_faster_whispers():
    from faster_whisper.transcribe import get_compression_ratio

    for text in ("", "안녕하세요", "정말 " * 40, "5월 17일 기준, 홍수로 인해 최소 20명이 사망했고"):
        assert compression_ratio(text) == get_compression_ratio(text)
    assert compression_ratio(decode(REPETITIVE).strip()) > 2.4 > compression_ratio(decode(SPEECH).strip())


def test_a_good_first_decode_is_kept_greedy():
    model = FakeModel(result(SPEECH))
    a = generate_with_fallback(model, "enc", [60, 61, 62], decode, OPTS, [7])
    assert a.temperature == 0.0 and a.tokens == SPEECH and len(model.calls) == 1
    call = model.calls[0]
    assert call["beam_size"] == 1 and "sampling_temperature" not in call
    assert call["max_initial_timestamp_index"] == 50 and call["suppress_tokens"] == [7]
    assert call["return_no_speech_prob"] and call["max_length"] == 448


def test_repetitive_text_falls_back_to_the_next_temperature():
    model = FakeModel(result(REPETITIVE, -0.1), result(SPEECH, -0.3))
    a = generate_with_fallback(model, "enc", [1], decode, OPTS, [])
    assert a.temperature == 0.2 and a.tokens == SPEECH
    sampled = model.calls[1]
    assert sampled["sampling_temperature"] == 0.2 and sampled["num_hypotheses"] == 5 and sampled["sampling_topk"] == 0


def test_improbable_text_falls_back_too():
    model = FakeModel(result(SPEECH, -1.5), result(SPEECH, -1.2), result(SPEECH[:5] + [TS + 60], -0.5))
    a = generate_with_fallback(model, "enc", [1], decode, OPTS, [])
    assert a.temperature == 0.4 and len(model.calls) == 3


def test_silence_does_not_fall_back_and_the_window_is_skipped():
    model = FakeModel(result(SPEECH, -1.5, no_speech=0.9))
    a = generate_with_fallback(model, "enc", [1], decode, OPTS, [])
    assert len(model.calls) == 1 and is_no_speech(a, OPTS)


def test_a_probable_text_is_kept_despite_a_high_no_speech_probability():
    a = generate_with_fallback(FakeModel(result(SPEECH, -0.3, no_speech=0.9)), "enc", [1], decode, OPTS, [])
    assert not is_no_speech(a, OPTS)


def test_when_every_temperature_fails_the_most_probable_non_repetitive_result_wins():
    script = [result(REPETITIVE, -0.1)] + [result(SPEECH, lp) for lp in (-1.9, -1.1, -1.6, -1.4, -1.3)]
    a = generate_with_fallback(FakeModel(*script), "enc", [1], decode, OPTS, [])
    assert a.avg_logprob == pytest.approx(-1.1) and a.tokens == SPEECH
    assert a.temperature == 1.0  # the last one tried, as faster-whisper reports it


def test_without_thresholds_there_is_one_decode():
    off = DecodeOptions(temperatures=(0.0,), compression_ratio_threshold=None, log_prob_threshold=None,
                        no_speech_threshold=None)
    model = FakeModel(result(REPETITIVE, -3.0, no_speech=0.99))
    a = generate_with_fallback(model, "enc", [1], decode, off, [])
    assert len(model.calls) == 1 and not is_no_speech(a, off)


def test_split_segments_follows_the_timestamps():
    segs, seek = split_segments(SPEECH, TS, 0.0, 500, 0)
    assert [(s, e) for s, e, _ in segs] == [(0.0, 1.0), (1.0, 3.0)] and seek == 500
    # no consecutive timestamps: one segment up to the last timestamp
    segs, seek = split_segments([TS + 0, 0, 1, TS + 40], TS, 2.0, 300, 200)
    assert segs == [(2.0, 2.8, [TS + 0, 0, 1, TS + 40])] and seek == 500
    # unfinished last segment: dropped, and the seek goes to the last timestamp (2 mel frames per step)
    segs, seek = split_segments([TS + 0, 0, TS + 50, TS + 50, 2, 3], TS, 0.0, 500, 0)
    assert [t for _, _, t in segs] == [[TS + 0, 0, TS + 50]] and seek == 100


def decoder(model):
    return WindowDecoder(model, FakeTokenizer(), [], OPTS)


def test_a_window_is_decoded_from_the_shared_encoder_output():
    model = FakeModel(result(SPEECH))
    text, extra = decoder(model).transcribe(["window0"], 5 * 16000, lambda seek: pytest.fail("no extra pass"))
    assert text == "안녕 하세요 오늘 날씨 가 좋네요" and extra == 0
    assert model.calls[0]["encoder_output"] == "window0" and model.calls[0]["prompt"] == [60, 61, 62]


def test_a_no_speech_window_gives_an_empty_transcript():
    model = FakeModel(result(SPEECH, -1.5, no_speech=0.9))
    assert decoder(model).transcribe(["w"], 16000 * 5, lambda s: None) == ("", 0)


def test_an_unfinished_segment_is_decoded_again_from_its_last_timestamp():
    model = FakeModel(result([TS + 0, 0, TS + 50, TS + 50, 2, 3]), result([TS + 0, 6, 7, TS + 100]))
    seen = []
    text, extra = decoder(model).transcribe(["w0"], 5 * 16000, lambda seek: seen.append(seek) or f"at{seek}")
    assert text == "안녕 정말 네" and extra == 1 and seen == [100]
    assert model.calls[1]["encoder_output"] == "at100"


def test_windows_on_30_s_boundaries_use_the_shared_outputs():
    model = FakeModel(result([TS + 0, 0, TS + 1500]), result([TS + 0, 1, TS + 250]))
    text, extra = decoder(model).transcribe(["w0", "w1"], 35 * 16000, lambda s: pytest.fail("no extra pass"))
    assert text == "안녕 하세요" and extra == 0
    assert [c["encoder_output"] for c in model.calls] == ["w0", "w1"]


def test_zero_length_segments_and_blank_text_are_dropped():
    # 0.2-0.2 s with text, then 0.4-0.6 s with a token that decodes to nothing
    model = FakeModel(result([TS + 10, 0, TS + 10, TS + 20, EOT + 5, TS + 30]))
    assert decoder(model).transcribe(["w"], 16000, lambda s: None)[0] == ""


def test_segments_past_the_audio_are_dropped_where_the_encoder_saw_only_the_clip():
    # a 4.4 s clip read twice: 0-4.4 s, then again "at" 5-7 s, past the audio's end (as the
    # decoder does when it reads a clip + 1 s instead of a padded 30 s window)
    again = [TS + 0, 0, 1, TS + 220, TS + 250, 0, 1, TS + 350]
    late = [TS + 0, 0, 1, TS + 200, TS + 210, 2, TS + 215]  # a second segment from 4.2 s
    model = FakeModel(result(again), result(again), result(late), result(late))
    clip = WindowDecoder(model, FakeTokenizer(), [], DecodeOptions(after_end_s=0.5))
    assert clip.transcribe(["w"], int(4.42 * 16000), lambda s: None)[0] == "안녕 하세요"
    assert decoder(model).transcribe(["w"], int(4.42 * 16000), lambda s: None)[0] == "안녕 하세요 안녕 하세요"
    # from 4.2 s: no room in a 4.42 s clip (under 0.5 s left), room in a 4.75 s one
    assert clip.transcribe(["w"], int(4.42 * 16000), lambda s: None)[0] == "안녕 하세요"
    assert clip.transcribe(["w"], int(4.75 * 16000), lambda s: None)[0] == "안녕 하세요 오늘"


def test_an_unfinished_segment_at_the_window_start_cannot_loop_forever():
    model = FakeModel(result([TS + 0, TS + 0, 2]), result([TS + 0, 3, TS + 20]))
    text, _ = decoder(model).transcribe(["w0"], 40 * 16000, lambda s: f"at{s}")
    assert text == "날씨" and [c["encoder_output"] for c in model.calls] == ["w0", "at3000"]


@pytest.mark.parametrize("name, layer, asr", [
    ("whisper-base-encoder", 3, "whisper-base"),  # the final layer is not computed
    ("whisper-base-encoder", None, "whisper-base-noguards"),
    ("whisper-base-encoder", None, "vosk-ko"),
    ("e5-speech", None, "whisper-base"),
])
def test_the_pass_is_shared_only_with_whisper_base_on_both_sides(name, layer, asr):
    class Enc:
        model_dir = "/nonexistent"

        def encode_windows(self, audio):  # pragma: no cover
            raise AssertionError

    enc = Enc()
    enc.name, enc.layer = name, layer
    assert not shares_pass(enc, asr)


def test_predictor_uses_the_joint_stage_and_reports_both_timings():
    from koemo.serving.predictor import Predictor

    calls = []

    def joint(audio):
        calls.append(len(audio))
        return "좋아요", np.ones((10, 4), np.float32), {"speech_encoder": 0.25, "asr": 0.5}

    def never(*_):
        raise AssertionError("the separate stages must not run")

    p = Predictor(labels=("a", "b"), asr=type("A", (), {"transcribe": never})(), speech_encoder=never,
                  text_encoder=lambda t: np.ones((2, 3), np.float32),
                  classify=lambda s, t: (np.array([0.25, 0.75]), None), joint=joint)
    out = p.predict(np.full(16000, 0.1, np.float32))
    assert calls == [16000] and out["transcript"] == "좋아요" and out["label"] == "b"
    assert out["timings"]["asr"] == 0.5 and out["timings"]["speech_encoder"] == 0.25


# --- real model -------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_clip_one_pass_gives_the_encoders_frames_and_a_good_transcript(require_model, emotiontts_utts):
    from koemo.asr.metrics import score
    from koemo.asr.shared_pass import SharedWhisper
    from koemo.data.audio import load_audio
    from koemo.encoders import get_speech_encoder

    require_model("whisper-base")
    utt = next(u for u in emotiontts_utts if u.id == "nea00004")  # 현재 본 사건과 관련하여 내부 감사를 진행하고 있습니다.
    audio = load_audio(utt.audio)
    enc = get_speech_encoder("whisper-base-encoder")
    assert shares_pass(enc, "whisper-base")
    shared = SharedWhisper(enc)
    text, frames, split = shared.joint(audio)
    np.testing.assert_array_equal(frames, enc.encode(audio))  # bit-identical emotion features
    assert score([utt.text], [text]).cer < 0.3 and set(split) == {"asr", "speech_encoder"}
    assert shared.extra_passes == 0
    assert shared.transcribe(np.zeros(16000, np.float32)) == ""


def test_the_shared_pass_drops_segments_past_the_audio_only_over_a_clip_window(require_model):
    from koemo.asr.shared_pass import AFTER_END_S, SharedWhisper
    from koemo.encoders import get_speech_encoder

    require_model("whisper-base")
    padded = SharedWhisper(get_speech_encoder("whisper-base-encoder", layer="all"))
    clip = SharedWhisper(get_speech_encoder("whisper-base-encoder", layer="all", window="clip"))
    assert padded.decoder.options.after_end_s is None and clip.decoder.options.after_end_s == AFTER_END_S == 0.5
    # both decide the transcript, so the transcript cache keeps them apart
    assert clip.params()["after_end_s"] == 0.5 and clip.params()["shared_pass"] != padded.params()["shared_pass"]
    assert "after_end_s" not in padded.params()  # transcripts cached before the option existed stay valid
    merged = SharedWhisper(get_speech_encoder("whisper-base-encoder", layer="all", window="30s-merged"))
    # the merged window hands the decoder 1500 frames, as the whole window does
    assert merged.decoder.options.after_end_s is None
    assert merged.params()["shared_pass"] not in (padded.params()["shared_pass"], clip.params()["shared_pass"])
