"""Assemble a :class:`~koemo.serving.predictor.Predictor` from real components: an ASR backend,
the speech and text encoders, and a fusion network (from a trained model bundle, read through
:mod:`koemo.training.bundle`).

The same encoder and fusion code that training uses runs here; nothing is re-implemented.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from koemo.errors import KoemoError
from koemo.paths import NAMED_MODELS, named_bundle_dir
from koemo.serving.limits import Limits
from koemo.serving.predictor import Predictor, SpeechStage
from koemo.serving.segment import with_trim
from koemo.sources import TextSource
from koemo.training import bundle as bundles

log = logging.getLogger("koemo")


def fusion_classifier(model, contribution: bool = True, temperature: float = 1.0):
    """``(frames [T, Da], tokens [T, Dt]) -> (probabilities, {"audio", "text"} shares)`` for a
    :class:`koemo.fusion.FusionModel`.

    The shares are gradient x activation at the fusion input (the paper's Grad-CAM modality
    contribution, :func:`koemo.evaluation.gradcam.modality_scores` with ``at="embed"``), computed in
    the same forward pass that gives the logits. ``temperature``: the bundle's calibration
    (:mod:`koemo.calibration`), dividing the logits.
    """
    import torch

    model.eval()

    def classify(speech: np.ndarray, text: np.ndarray):
        a = torch.from_numpy(np.asarray(speech, dtype=np.float32))[None]
        t = torch.from_numpy(np.asarray(text, dtype=np.float32))[None]
        a_mask = torch.ones(a.shape[:2], dtype=torch.bool)
        t_mask = torch.ones(t.shape[:2], dtype=torch.bool)
        if contribution:
            from koemo.evaluation.gradcam import modality_scores, shares

            a_score, t_score, _idx, logits = modality_scores(model, a, a_mask, t, t_mask, at="embed")
            share = shares(a_score, t_score)[0]
            contrib = None if np.isnan(share).any() else {"audio": float(share[0]), "text": float(share[1])}
        else:
            with torch.inference_mode():
                logits = model(a, a_mask, t, t_mask)
            contrib = None
        probs = torch.softmax(logits.double() / temperature, dim=-1)[0].numpy()
        return probs, contrib

    return classify


def predictor_from_parts(
    labels: Sequence[str],
    asr,
    speech_encoder,
    text_encoder,
    fusion,
    *,
    info: dict[str, Any] | None = None,
    limits: Limits | None = None,
    contribution: bool = True,
    speech_stage: SpeechStage | None = None,
    temperature: float = 1.0,
    classify=None,
) -> Predictor:
    """A predictor from loaded parts: ``asr.transcribe``, ``speech_encoder.encode(audio)``,
    ``text_encoder.encode([text])`` and a fusion ``nn.Module``; ``classify``: run the fusion
    another way (an exported head, :func:`koemo.serving.export.onnx_classifier`) instead."""
    described = {
        "asr": getattr(asr, "name", type(asr).__name__),
        "encoders": {
            "speech": {"name": getattr(speech_encoder, "name", ""), "id": _safe_id(speech_encoder)},
            "text": {"name": getattr(text_encoder, "name", ""), "id": _safe_id(text_encoder)},
        },
        "fusion": getattr(fusion, "registry_name", type(fusion).__name__),
    }
    described.update(info or {})
    return Predictor(
        labels=tuple(labels),
        asr=asr,
        speech_encoder=speech_encoder.encode,
        text_encoder=lambda text: text_encoder.encode([text])[0],
        classify=classify or fusion_classifier(fusion, contribution=contribution, temperature=temperature),
        info=described,
        limits=limits or Limits(),
        speech_stage=speech_stage or SpeechStage(),
    )


def _safe_id(encoder) -> str:
    try:
        return str(encoder.id)
    except Exception:  # noqa: BLE001 - an id is informative only
        return ""


_ASR: dict[str, Any] = {}


def get_asr(name: str):
    """An ASR backend by name, built once per process (the models load in the constructor)."""
    from koemo.asr import make_backend

    if name not in _ASR:
        _ASR[name] = make_backend(name)
    return _ASR[name]


def default_bundle_dir() -> Path:
    """Where ``make demo`` leaves the trained model bundle that ``predict``/``serve`` use by default."""
    return named_bundle_dir("default")


def resolve_model(path: str | Path | None) -> tuple[Path, str | None]:
    """``(bundle directory, its name)`` for ``--model``: None is ``default``; a name of
    :data:`NAMED_MODELS` that is not a directory here is that model; anything else a path.
    A named model not trained yet raises with the command that trains it."""
    key = "default" if path is None else str(path)
    if key in NAMED_MODELS and (path is None or not Path(key).is_dir()):
        where = named_bundle_dir(key)
        if not where.exists():
            how = NAMED_MODELS[key].format(path=where)
            raise KoemoError(f"no trained model at {where} (the '{key}' model); train it with: {how}"
                             + (", or pass --model BUNDLE_DIR" if key == "default" else ""))
        return where, key
    return Path(path).expanduser(), None


def bundle_asr(meta: dict[str, Any], config: dict[str, Any]) -> str:
    """The recogniser a bundle expects in service: its validation text source's backend
    (``asr:whisper-base@babble-0db`` -> ``whisper-base``), else the recipe's ``asr.backend``."""
    for source in (meta.get("valid_source"), (config.get("eval") or {}).get("text")):
        try:
            parsed = TextSource.parse(source)
        except KoemoError:
            continue
        if not parsed.is_gold:
            return parsed.backend
    return (config.get("asr") or {}).get("backend") or "whisper-base"


#: how the fusion head runs: PyTorch (with the Grad-CAM contribution), or its ONNX export in
#: onnxruntime, float32 or int8 (no contribution: :mod:`koemo.serving.export`); with either ONNX
#: runtime the Whisper encoder runs in onnxruntime too (float32, :mod:`koemo.encoders.whisper_onnx`)
RUNTIMES = ("torch", "onnx", "onnx-int8")


def load_predictor(path: str | Path | None, *, asr: str | None = None, limits: Limits,
                   runtime: str = "torch", shared_pass: bool = True, trim_margin: float | None = None) -> Predictor:
    """Load the model bundle at ``path`` (default: :func:`default_bundle_dir`) with its encoders;
    ``runtime`` (:data:`RUNTIMES`) says how the fusion head runs. ``shared_pass``: where the
    speech encoder is Whisper base's and the recogniser whisper-base, decode the transcript from
    the speech encoder's pass (:mod:`koemo.asr.shared_pass`) instead of encoding twice.
    ``trim_margin``: a short recording is cut to its speech plus this many seconds (negative:
    kept whole; None: the margin the bundle's training clips were cut with, else the default)."""
    from koemo.encoders import get_speech_encoder, get_text_encoder
    from koemo.encoders.base import speech_settings

    if runtime not in RUNTIMES:
        raise KoemoError(f"--runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    path, _ = resolve_model(path)
    if not path.exists():
        raise KoemoError(f"{path}: model bundle not found")
    if not path.is_dir():
        raise KoemoError(f"{path}: not a model bundle (a bundle is a directory)")
    path = bundles.resolve_bundle(path)
    if bundles.read_meta(path).get("end_to_end"):
        raise KoemoError(
            f"{path}: a fine-tuned (end-to-end) bundle; predict/serve load frozen-encoder bundles only so far"
        )
    bundle = bundles.load_bundle(path)
    meta, config = bundle.meta, bundle.config or {}
    if not meta.get("complete", True):
        log.warning("%s: training did not finish; serving the best epoch so far", path)
    enc = config.get("encoders") or {}
    speech_name = enc.get("speech", "whisper-base-encoder")
    speech = get_speech_encoder(speech_name, **speech_settings(enc), **_speech_runtime(speech_name, runtime))
    text = get_text_encoder(enc.get("text", "embeddinggemma-300m"))
    for kind, encoder in (("speech", speech), ("text", text)):
        recorded = (meta.get("encoders") or {}).get(kind)
        recorded_id = recorded.get("id") if isinstance(recorded, dict) else recorded
        if recorded_id and recorded_id != _safe_id(encoder):
            log.warning("%s: trained with %s encoder %s, the installed one is %s", path, kind, recorded_id, _safe_id(encoder))
    asr_name = asr or bundle_asr(meta, config)
    stage = speech_stage_of(bundle)
    temperature, lone_temperature = bundles.temperatures(meta)
    info = {
        "bundle": str(path),
        "fusion": (meta.get("model") or {}).get("fusion", ""),
        "text_train": meta.get("text_train"),
        "trained_with": {"koemo_version": meta.get("koemo_version"), "split": meta.get("split"),
                         "best_epoch": meta.get("best_epoch"),
                         "valid_weighted_f1": ((meta.get("metrics") or {}).get("valid") or {}).get("weighted_f1")},
    }
    info["normalise"] = stage.normaliser.mode if stage.normaliser else "none"
    info["temperature"] = temperature
    info["temperature_lone_clip"] = lone_temperature
    info["runtime"] = runtime
    info["speech_runtime"] = getattr(speech, "runtime", "torch")
    classify = None
    if runtime != "torch":
        from koemo.serving.export import onnx_classifier, onnx_for_bundle

        onnx_file = onnx_for_bundle(bundle, int8=runtime == "onnx-int8")
        info["onnx"] = str(onnx_file)
        classify = onnx_classifier(onnx_file, temperature)
    shared = get_shared_pass(speech, asr_name) if shared_pass else None
    info["shared_pass"] = shared is not None
    predictor = predictor_from_parts(
        bundle.labels, shared or get_asr(asr_name), speech, text, bundle.model, info=info, limits=limits,
        speech_stage=stage, temperature=temperature, classify=classify,
    )
    predictor.joint = shared.joint if shared is not None else None
    predictor.lone_power = temperature / lone_temperature
    _add_lone_head(predictor, path, bundle.labels, runtime)
    if enc.get("prosody"):
        from koemo.encoders.prosody import prosody_stage

        predictor.speech_encoder, predictor.joint = prosody_stage(predictor.speech_encoder, predictor.joint)
    predictor.info["prosody"] = bool(enc.get("prosody"))
    if trim_margin is None and enc.get("trim_margin") is not None:  # as the training clips were cut
        trim_margin = float(enc["trim_margin"])
    predictor.segment_config = with_trim(predictor.segment_config, trim_margin)
    predictor.info["trim_margin"] = predictor.segment_config.trim_margin_s
    return predictor


def _add_lone_head(predictor: Predictor, path: Path, labels, runtime: str) -> None:
    """The bundle's second head for lone clips (``lone/``, ``train.lone_head``), with the
    temperature fitted for it, where there is one (torch runtime only: the ONNX export is of the
    first head, which then serves lone clips with its own lone temperature)."""
    where = path / bundles.LONE_HEAD
    predictor.info["lone_head"] = None
    if not (where / bundles.META).is_file():
        return
    if runtime != "torch":
        log.warning("%s: the lone-clip head runs on the torch runtime only; --runtime %s serves lone clips "
                    "with the first head", where, runtime)
        return
    lone = bundles.load_bundle(where)
    if list(lone.labels) != list(labels):
        raise KoemoError(f"{where}: the lone-clip head predicts {', '.join(lone.labels)}, the bundle "
                         f"{', '.join(labels)}")
    stage = speech_stage_of(lone)
    if stage.view != predictor.speech_stage.view or stage.pool != predictor.speech_stage.pool:
        raise KoemoError(f"{where}: the lone-clip head reads another speech input than the bundle")
    predictor.speech_stage_lone = stage  # its own layers, if it reads fewer
    t = bundles.temperatures(lone.meta)[1]
    predictor.classify_lone = fusion_classifier(lone.model, temperature=t)
    predictor.info["lone_head"] = str(where)
    predictor.info["temperature_lone_clip"] = t


def _speech_runtime(name: str, runtime: str) -> dict:
    """``--runtime onnx|onnx-int8`` runs the speech encoder in onnxruntime too where it has an ONNX
    runtime (float32 always: int8 would change the features the head was trained on)."""
    from koemo.encoders.base import SPEECH_ENCODERS

    cls = SPEECH_ENCODERS.get(name) if name in SPEECH_ENCODERS else None
    return {"runtime": "onnx"} if runtime != "torch" and "onnx" in getattr(cls, "runtimes", ()) else {}


_SHARED: dict[tuple[int, str], Any] = {}


def get_shared_pass(speech_encoder, asr_name: str):
    """A :class:`koemo.asr.shared_pass.SharedWhisper` over ``speech_encoder`` when its pass can
    feed the ``asr_name`` recogniser's decoder, else None; built once per process."""
    from koemo.asr.shared_pass import SharedWhisper, shares_pass

    if not shares_pass(speech_encoder, asr_name):
        return None
    key = (id(speech_encoder), asr_name)
    if key not in _SHARED:
        _SHARED[key] = SharedWhisper(speech_encoder)
    return _SHARED[key]


def speech_stage_of(bundle) -> SpeechStage:
    """The speech input stage a bundle was trained with (view, normaliser and its corpus
    statistics); a bundle from before the stage existed reads frames as they come."""
    from koemo.fusion.inputs import Normaliser

    spec = ((bundle.meta.get("encoders") or {}).get("speech") or {}).get("input") or {}
    norm = spec.get("normalise") or {"mode": "none"}
    normaliser = None
    if norm.get("mode", "none") != "none":
        arrays = bundle.input_arrays()
        if not arrays:
            raise KoemoError(f"{bundle.path}: trained with {norm['mode']} normalisation but has no "
                             f"{bundles.INPUTS} with the corpus statistics; retrain it")
        normaliser = Normaliser.from_parts(norm, arrays)
    layers = spec.get("layers")
    return SpeechStage(spec.get("view", "frames"), normaliser, int(spec.get("pool", 1)),
                       None if layers is None else tuple(int(k) for k in layers))
