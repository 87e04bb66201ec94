"""A bundle trained with ``encoders.prosody`` is served with the functionals appended (the head
would otherwise get fewer inputs than it was trained on)."""

from __future__ import annotations

import shutil

import numpy as np
import yaml

from koemo.data.audio import load_audio
from koemo.encoders.prosody import FEATURES, functionals
from koemo.serving.limits import Limits
from koemo.serving.loader import load_predictor


def test_the_loader_appends_the_functionals_where_the_bundle_says(trained_bundle, clip, tmp_path):
    plain = load_predictor(trained_bundle, limits=Limits(), shared_pass=False)
    copy = tmp_path / "with-prosody"
    shutil.copytree(trained_bundle, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text(encoding="utf-8"))
    config.setdefault("encoders", {})["prosody"] = True
    (copy / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    served = load_predictor(copy, limits=Limits(), shared_pass=False)
    audio = load_audio(clip)
    before, after = plain.speech_encoder(audio), served.speech_encoder(audio)
    assert after.shape == before.shape[:-1] + (before.shape[-1] + len(FEATURES),)
    np.testing.assert_allclose(after[0, -len(FEATURES):], functionals(audio), rtol=1e-5)
    assert served.info["prosody"] is True and plain.info["prosody"] is False
