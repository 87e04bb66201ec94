"""``koemo export --format onnx``: every fusion head exports with dynamic frame and token axes and
onnxruntime gives PyTorch's logits (float32: within ``TOLERANCE_FP32``; int8: probabilities within
``TOLERANCE_INT8``); ``--runtime onnx`` classifies like PyTorch (temperature included); the
exports found or made for a bundle follow its weights; bad input gives one line.

Fast tests build tiny untrained heads into real bundle directories (``write_bundle``); the slow one
runs ``koemo predict --runtime onnx`` on a real clip with a trained bundle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from koemo.errors import KoemoError
from koemo.fusion import FUSIONS
from koemo.serving import export as ex
from tests.serving.conftest import LABELS

DA, DT = 6, 5


def tiny_bundle(path, fusion="shallow", *, seed=0, temperature=None, da=DA, dt=DT, audio_layers=1, **model_kw):
    """A bundle directory holding an untrained ``fusion`` head (hidden 8, no dropout)."""
    from koemo.config import ModelConfig
    from koemo.fusion import build_from_config
    from koemo.training.bundle import describe_model, write_bundle

    torch.manual_seed(seed)
    cfg = ModelConfig(fusion=fusion, hidden=model_kw.pop("hidden", 8), heads=2, dropout=0.0, **model_kw)
    model = build_from_config(cfg, da, dt, len(LABELS), audio_layers)
    if model.standardised:  # statistics far from (0, 1), so forgetting them shows
        for name in ("audio_mean", "text_mean"):
            getattr(model, name).normal_(0.0, 2.0)
        for name in ("audio_sd", "text_sd"):
            getattr(model, name).uniform_(0.3, 3.0)
    meta = {**describe_model(cfg, model), "labels": list(LABELS), "complete": True}
    if temperature is not None:
        meta["calibration"] = {"temperature": temperature}
    write_bundle(path, meta, {}, model.state_dict())
    return path


def loaded(path):
    from koemo.training.bundle import load_bundle

    return load_bundle(path).model


def feed(model, frames, tokens, seed):
    return ex.random_inputs(model, 1, frames, tokens, np.random.default_rng(seed))


def koemo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "koemo.cli", *args], capture_output=True, text=True, check=False,
                          timeout=600, env=dict(os.environ))


VARIANTS = [(name, {}) for name in sorted(FUSIONS.names())] + [
    ("mult", {"audio_pool": 3}),
    ("fusion-transformer", {"audio_layers": 3, "standardise": True, "layer_mix": "concat"}),
    ("linear", {"audio_layers": 3, "standardise": True, "layer_mix": "weighted"}),
]


@pytest.mark.parametrize("fusion, kw", VARIANTS, ids=[f"{n}{'-' + '-'.join(map(str, k.values())) if k else ''}"
                                                     for n, k in VARIANTS])
def test_onnx_logits_equal_pytorch_at_two_lengths(tmp_path, fusion, kw):
    """The exported graph takes any frame and token count (two lengths, neither the export's
    example) and gives PyTorch's logits within the stated tolerance; the report says so."""
    bundle = tiny_bundle(tmp_path / "b", fusion, **kw)
    report = ex.export_onnx(bundle, tmp_path / "head.onnx")
    assert report.path == tmp_path / "head.onnx" and report.bytes == report.path.stat().st_size
    assert report.max_diff <= ex.TOLERANCE_FP32 == report.tolerance and not report.int8
    side = json.loads((tmp_path / "head.onnx.json").read_text())
    assert side["labels"] == list(LABELS) and side["fusion"] == fusion and side["int8"] is False
    assert side["weights_sha256"] == ex.weights_sha256(bundle)
    model = loaded(bundle)
    sess = ex.session(report.path)
    outs = []
    for frames, tokens, seed in ((13, 4, 1), (40, 9, 2)):
        x = feed(model, frames, tokens, seed)
        ref, got = ex.torch_logits(model, x), ex.run_session(sess, x)
        assert got.shape == (1, len(LABELS))
        np.testing.assert_allclose(got, ref, rtol=0, atol=ex.TOLERANCE_FP32)
        outs.append(got)
    assert not np.allclose(outs[0], outs[1])  # the inputs matter: the check is not vacuous


def test_padded_batch_equals_the_rows_alone(tmp_path):
    """Masks are real inputs of the graph: a padded row of a batch of 2 gives what it gives alone."""
    bundle = tiny_bundle(tmp_path / "b", "mult")
    sess = ex.session(ex.export_onnx(bundle, tmp_path / "m.onnx").path)
    model = loaded(bundle)
    x = ex.random_inputs(model, 2, 10, 6, np.random.default_rng(3), lengths=([10, 4], [6, 2]))
    both = ex.run_session(sess, x)
    alone = ex.run_session(sess, {"audio": x["audio"][1:, :4], "audio_mask": x["audio_mask"][1:, :4],
                                  "text": x["text"][1:, :2], "text_mask": x["text_mask"][1:, :2]})
    np.testing.assert_allclose(both[1:], alone, atol=ex.TOLERANCE_FP32)
    np.testing.assert_allclose(both, ex.torch_logits(model, x), atol=ex.TOLERANCE_FP32)


def test_int8_is_smaller_and_close_in_probability(tmp_path):
    bundle = tiny_bundle(tmp_path / "b", "shallow", da=96, dt=64, hidden=64)
    fp32 = ex.export_onnx(bundle)
    int8 = ex.export_onnx(bundle, int8=True)
    assert fp32.path == bundle / "fusion.onnx" and int8.path == bundle / "fusion.int8.onnx"
    assert int8.int8 and int8.tolerance == ex.TOLERANCE_INT8 and int8.checks == len(ex.CHECK_LENGTHS) + 2
    assert int8.bytes < 0.5 * fp32.bytes  # the weights really are int8
    model = loaded(bundle)
    sess = ex.session(int8.path)
    for frames, tokens, seed in ((13, 4, 1), (40, 9, 2)):
        x = feed(model, frames, tokens, seed)
        p_ref, p_got = ex.softmax(ex.torch_logits(model, x)), ex.softmax(ex.run_session(sess, x))
        assert np.abs(p_ref - p_got).max() <= ex.TOLERANCE_INT8
    assert json.loads((bundle / "fusion.int8.onnx.json").read_text())["int8"] is True


def test_onnx_classifier_applies_the_temperature_like_torch(tmp_path):
    """``--runtime onnx``'s classifier equals the PyTorch one (same temperature), and the
    temperature changes the answer (so forgetting it would show); no contribution."""
    from koemo.serving.loader import fusion_classifier

    bundle = tiny_bundle(tmp_path / "b", "fusion-transformer")
    path = ex.export_onnx(bundle).path
    model = loaded(bundle)
    x = feed(model, 17, 5, 4)
    speech, text = x["audio"][0], x["text"][0]
    cold, contrib = ex.onnx_classifier(path, temperature=0.25)(speech, text)
    ref, _ = fusion_classifier(model, contribution=False, temperature=0.25)(speech, text)
    assert contrib is None
    np.testing.assert_allclose(cold, ref, atol=1e-5)
    warm, _ = ex.onnx_classifier(path, temperature=1.0)(speech, text)
    assert np.abs(cold - warm).max() > 1e-3
    assert cold.sum() == pytest.approx(1.0)


def test_export_for_bundle_follows_the_weights(tmp_path):
    """No export in the bundle: one is made in the cache once and reused; ``koemo export``'s file
    in the bundle is used when it was made for these weights, and ignored once they change."""
    from koemo.paths import cache_root
    from koemo.training.bundle import load_bundle

    bundle = tiny_bundle(tmp_path / "b", "shallow")
    first = ex.onnx_for_bundle(load_bundle(bundle))
    assert first.is_file() and cache_root() in first.parents and not (bundle / "fusion.onnx").exists()
    mtime = first.stat().st_mtime_ns
    assert ex.onnx_for_bundle(load_bundle(bundle)) == first and first.stat().st_mtime_ns == mtime
    own = ex.export_onnx(bundle).path
    assert ex.onnx_for_bundle(load_bundle(bundle)) == own == bundle / "fusion.onnx"
    tiny_bundle(bundle, "shallow", seed=1)  # retrained: new weights, same directory
    assert not (bundle / "fusion.onnx").exists()  # the bundle is rewritten whole
    ex.export_onnx(bundle, tmp_path / "elsewhere.onnx")
    (bundle / "fusion.onnx").write_bytes((tmp_path / "elsewhere.onnx").read_bytes())
    (bundle / "fusion.onnx.json").write_text(json.dumps({**json.loads((tmp_path / "elsewhere.onnx.json").read_text()),
                                                         "weights_sha256": "0" * 64}))
    fresh = ex.onnx_for_bundle(load_bundle(bundle))
    assert fresh not in (first, own) and cache_root() in fresh.parents
    model, sess = loaded(bundle), ex.session(fresh)
    x = feed(model, 9, 3, 5)
    np.testing.assert_allclose(ex.run_session(sess, x), ex.torch_logits(model, x), atol=ex.TOLERANCE_FP32)


def test_an_export_beyond_tolerance_is_not_written(tmp_path, monkeypatch):
    bundle = tiny_bundle(tmp_path / "b", "linear")
    real = ex.torch_logits
    monkeypatch.setattr(ex, "torch_logits", lambda model, x: real(model, x) + 1e-3)
    with pytest.raises(KoemoError, match=r"differs from PyTorch: max \|logit difference\| 0\.001 > 0\.0001; not written"):
        ex.export_onnx(bundle, tmp_path / "out" / "x.onnx")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_head_that_cannot_export_says_which_and_why(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("data-dependent branch\nlong trace ...")

    bundle = tiny_bundle(tmp_path / "b", "mult")
    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(KoemoError) as e:
        ex.export_onnx(bundle)
    assert str(e.value) == (f"{bundle}: the mult fusion head cannot be exported to ONNX "
                            "(RuntimeError: data-dependent branch)")
    assert not (bundle / "fusion.onnx").exists()


def test_unknown_runtime_is_refused_before_loading(tmp_path):
    from koemo.serving.limits import Limits
    from koemo.serving.loader import load_predictor

    with pytest.raises(KoemoError, match=r"^--runtime 'tensorrt': use one of torch, onnx, onnx-int8$"):
        load_predictor(tmp_path / "nowhere", limits=Limits(), runtime="tensorrt")


def test_cli_export_and_its_errors(tmp_path, monkeypatch, capsys):
    """``koemo export`` through the command's entry point (in process: a subprocess per case
    cost ~4 s of imports each): what it prints, and one line with exit status 2 for bad input."""
    from koemo.cli import main

    def koemo_main(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["koemo", *args])
        with pytest.raises(SystemExit) as e:
            main()
        out = capsys.readouterr()
        return e.value.code or 0, out.out, out.err

    bundle = tiny_bundle(tmp_path / "b", "audio-only")
    code, out, err = koemo_main("export", str(bundle), "--format", "onnx", "--out", str(tmp_path / "a.onnx"))
    assert code == 0, err
    size = (tmp_path / "a.onnx").stat().st_size
    lines = out.splitlines()
    assert lines[0] == f"wrote {tmp_path / 'a.onnx'} ({size} bytes; audio-only fusion head, opset {ex.OPSET}) and a.onnx.json"
    assert lines[1].startswith("max |logit difference| vs PyTorch: ") and "(tolerance 0.0001)" in lines[1]
    for args, message in (
        ((str(tmp_path / "nope"),), f"{tmp_path / 'nope'}: model bundle not found"),
        ((str(tmp_path / "a.onnx"),), f"{tmp_path / 'a.onnx'}: not a model bundle (a bundle is a directory)"),
        ((str(bundle), "--format", "tflite"), "--format 'tflite': use one of onnx"),
    ):
        code, _, err = koemo_main("export", *args)
        assert code == 2 and err.strip() == f"error: {message}", err
    (tmp_path / "empty").mkdir()
    code, _, err = koemo_main("export", str(tmp_path / "empty"))
    assert code == 2 and err.startswith(f"error: {tmp_path / 'empty'}: not a koemo model bundle")
    assert "Traceback" not in err


@pytest.mark.slow
def test_predict_runtime_onnx_matches_torch_on_a_real_clip(trained_bundle, predictor, clip):
    """``koemo predict --runtime onnx`` (a subprocess; the head exported into its cache) gives the
    in-process PyTorch predictor's probabilities on a real recording, without a contribution."""
    from koemo.data.audio import load_audio

    torch_result = predictor.predict(load_audio(clip), name=str(clip))
    r = koemo("predict", str(clip), "--model", str(trained_bundle), "--asr", "whisper-base", "--json",
              "--runtime", "onnx")
    assert r.returncode == 0, r.stderr
    onnx_result = json.loads(r.stdout.splitlines()[0])
    assert onnx_result["transcript"] == torch_result["transcript"]
    assert onnx_result["label"] == torch_result["label"]
    for label in LABELS:
        assert onnx_result["probabilities"][label] == pytest.approx(torch_result["probabilities"][label], abs=1e-5)
    assert onnx_result["contribution"] is None and torch_result["contribution"] is not None
    assert not (trained_bundle / "fusion.onnx").exists()  # never written into the bundle unasked
