"""Rules that hold for every input, checked on inputs hypothesis draws (and shrinks on failure):
splits, metrics against sklearn, the text-source grammar, padding of the fusion models, and the
service's audio decoder. Each rule is one a planted bug breaks (see docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koemo.data.manifest import Utterance
from koemo.data.splits import make_folds
from koemo.errors import BadInputError, KoemoError
from koemo.metrics import compute_metrics
from koemo.sources import TextSource, TrainingText

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABELS = ["neutral", "happy", "sad", "angry"]

# ---------------------------------------------------------------------------------------------
# splits


@st.composite
def corpora(draw):
    """A corpus of speakers x sentence groups (some cells empty), each clip with a label."""
    n_spk = draw(st.integers(4, 8))
    n_grp = draw(st.integers(4, 8))
    if draw(st.booleans()):  # every speaker reads every sentence
        cells = [(s, g) for s in range(n_spk) for g in range(n_grp)]
    else:
        cells = draw(st.lists(st.tuples(st.integers(0, n_spk - 1), st.integers(0, n_grp - 1)),
                              min_size=12, max_size=60, unique=True))
    spk_used = {s for s, _ in cells}
    grp_used = {g for _, g in cells}
    if len(spk_used) < 4 or len(grp_used) < 4:
        cells += [(s, s) for s in range(4)]
    return [Utterance(id=f"s{s}-g{g}", audio=f"/x/s{s}-g{g}.wav", label=LABELS[(s + g) % 4],
                      speaker=f"spk{s}", group=f"grp{g}") for s, g in sorted(set(cells))]


@FAST
@given(utts=corpora(), folds=st.integers(2, 3), seed=st.integers(0, 50), valid=st.sampled_from(["holdout", "none"]))
def test_speaker_sentence_folds_are_doubly_disjoint_and_test_each_clip_at_most_once(utts, folds, seed, valid):
    by_id = {u.id: u for u in utts}
    try:
        out = make_folds(utts, "speaker-sentence", folds, seed, valid=valid)
    except KoemoError as e:  # a corpus too sparse to hold out validation: said, not crashed
        assert valid == "holdout" and "too few speakers or sentences" in str(e)
        return
    tested = [i for f in out for i in f.test]
    assert len(tested) == len(set(tested))  # never twice per seed
    for f in out:
        train = [by_id[i] for i in f.train + f.valid]
        test = [by_id[i] for i in f.test]
        assert {u.speaker for u in train}.isdisjoint({u.speaker for u in test})
        assert {u.group for u in train}.isdisjoint({u.group for u in test})
        assert set(f.train).isdisjoint(f.valid)
        assert (valid == "none") == (not f.valid)
    # on a complete grid every clip is tested: each (speaker fold, sentence fold) cell is a test fold
    if len(utts) == len({u.speaker for u in utts}) * len({u.group for u in utts}):
        assert sorted(tested) == sorted(by_id)


@FAST
@given(utts=corpora(), folds=st.integers(2, 3), seed=st.integers(0, 50),
       protocol=st.sampled_from(["speaker", "sentence"]))
def test_one_attribute_folds_partition_the_clips(utts, folds, seed, protocol):
    attr = "speaker" if protocol == "speaker" else "group"
    by_id = {u.id: u for u in utts}
    out = make_folds(utts, protocol, folds, seed)
    assert sorted(i for f in out for i in f.test) == sorted(by_id)
    for f in out:
        assert {getattr(by_id[i], attr) for i in f.train + f.valid}.isdisjoint(
            {getattr(by_id[i], attr) for i in f.test})
    assert make_folds(list(reversed(utts)), protocol, folds, seed) == out  # order never matters


# ---------------------------------------------------------------------------------------------
# metrics


@FAST
@given(pairs=st.lists(st.tuples(st.sampled_from(LABELS), st.sampled_from(LABELS)), min_size=1, max_size=80))
def test_metrics_agree_with_sklearn(pairs):
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    y, p = [a for a, _ in pairs], [b for _, b in pairs]
    m = compute_metrics(y, p, LABELS)
    present = [lab for lab in LABELS if lab in y]
    assert m.accuracy == pytest.approx(accuracy_score(y, p))
    assert m.weighted_f1 == pytest.approx(f1_score(y, p, labels=LABELS, average="weighted", zero_division=0))
    assert m.unweighted_accuracy == pytest.approx(recall_score(y, p, labels=present, average="macro",
                                                               zero_division=0))
    assert m.confusion.sum() == len(pairs)


# ---------------------------------------------------------------------------------------------
# the text-source grammar

backends = st.from_regex(r"[a-z][a-z0-9._-]{0,12}", fullmatch=True)
sources = st.one_of(
    st.just(TextSource()),
    st.builds(TextSource.asr, backends),
    st.builds(TextSource.asr, backends, st.sampled_from(["white", "pink", "babble"]),
              st.integers(-10, 40).map(float) | st.sampled_from([2.5, 7.5, -2.5]), st.integers(0, 5)),
)


@FAST
@given(source=sources)
def test_text_sources_print_and_parse_back(source):
    assert TextSource.parse(str(source)) == source
    if not source.is_gold:
        for mode in ("asr", "cr"):
            text = TrainingText(mode, source)
            assert TrainingText.parse(str(text)) == text


@FAST
@given(name=st.text(max_size=30))
def test_any_string_is_a_source_or_one_clear_error(name):
    try:
        TextSource.parse(name)
    except KoemoError as e:
        assert "\n" not in str(e)


# ---------------------------------------------------------------------------------------------
# fusion models: padding never changes a prediction

DA, DT, C = 6, 5, 4


@pytest.mark.parametrize("name", ["linear", "shallow", "audio-only", "text-only", "fusion-transformer", "mult"])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_padding_with_any_garbage_leaves_each_prediction_alone(name, data):
    from koemo.fusion import build_fusion

    torch.manual_seed(0)
    model = build_fusion(name, DA, DT, C, hidden=8, heads=2, dropout=0.0).eval()
    la = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))
    lt = data.draw(st.lists(st.integers(1, 5), min_size=len(la), max_size=len(la)))
    pad_a, pad_t = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
    garbage = data.draw(st.floats(-1e3, 1e3))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    Ta, Tt = max(la) + pad_a, max(lt) + pad_t
    am = torch.arange(Ta)[None] < torch.tensor(la)[:, None]
    tm = torch.arange(Tt)[None] < torch.tensor(lt)[:, None]
    audio = torch.where(am[..., None], torch.randn(len(la), Ta, DA, generator=g), torch.tensor(garbage))
    text = torch.where(tm[..., None], torch.randn(len(la), Tt, DT, generator=g), torch.tensor(-garbage))
    with torch.no_grad():
        batch = model(audio, am, text, tm)
        for i in range(len(la)):
            alone = model(audio[i:i + 1, :la[i]], am[i:i + 1, :la[i]], text[i:i + 1, :lt[i]], tm[i:i + 1, :lt[i]])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# the service's audio decoder: any bytes give audio or a 4xx reason


def _wav(n: int) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda n, cut: _wav(n)[:cut], st.integers(0, 4000), st.integers(0, 9000)),
    st.builds(lambda n, junk: _wav(n) + junk, st.integers(0, 400), st.binary(max_size=200)),
    st.builds(lambda n, i, b: (lambda w: w[:i] + bytes([b]) + w[i + 1:])(_wav(n)), st.integers(1, 800),
              st.integers(0, 60), st.integers(0, 255)),
))
def test_any_bytes_decode_to_audio_or_a_4xx_reason(data):
    from koemo.serving.limits import Limits, RejectedAudio, decode_audio

    try:
        audio = decode_audio(data, "upload.wav", Limits(max_upload_mb=0.005, max_duration_s=0.2))
    except RejectedAudio as e:
        assert 400 <= e.status < 500 and "upload.wav" in str(e)
    except BadInputError as e:  # pragma: no cover - decode_audio must say the status
        pytest.fail(f"a BadInputError without an HTTP status: {e}")
    else:
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
