"""Silence at the edges of a clip: what it does to the shipped model, and what the service's cut does.

    python benchmarks/edge_silence.py                  # the table in docs/voice.md
    python benchmarks/edge_silence.py --seeds 5 --json out.json
    python benchmarks/edge_silence.py --margin 0.1      # the service's cut with another margin

Corpora differ in how much silence they leave around an utterance (EmotionTTS: ~0.42 s before,
~0.54 s after, very regular); the pooled heads read the mean and spread of every frame, silence
included. This re-scores the recipe's text-neutral fold bundles (one per seed) on their 100 test
clips re-encoded with their edges changed:

- ``as recorded``: the protocol's clips;
- ``+2 s silence``: 2 s of near-silence (a -80 dBFS noise floor) added before and after;
- ``cut tight``: the silence before and after removed (:func:`koemo.serving.segment.trimmed_span`
  with no margin);

each as the training features (``as is``) and as the service encodes a short recording (``cut``:
the span of :func:`~koemo.serving.segment.trimmed_span`, its default 0.25 s margin or
``--margin``). Three test-time groupings (``speaker``, the whole test set as one folder, each
clip alone with the corpus statistics). Text: the clean service transcript. Weighted F1, mean ±
sd over seeds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SR = 16000
EDGES = ("as recorded", "+2 s silence", "cut tight")
MODES = ("speaker", "test set", "clip + corpus")


@dataclass(frozen=True)
class Edges:
    """A test-time transform as the feature store takes it (``key`` names its entries)."""

    edge: str
    service_cut: bool
    margin: float = 0.25

    @property
    def key(self) -> str:
        margin = f"|margin={self.margin:g}" if self.service_cut else ""
        return f"edges|{self.edge}|cut={int(self.service_cut)}{margin}|v1"

    def __call__(self, utt, audio: np.ndarray) -> np.ndarray:
        from koemo.serving.segment import SegmentConfig, cut, trimmed_span

        x = np.asarray(audio, dtype=np.float32)
        if self.edge == "+2 s silence":
            rng = np.random.default_rng(0)
            floor = rng.normal(0, 1e-4, (2, 2 * SR)).astype(np.float32)
            x = np.concatenate([floor[0], x, floor[1]])
        elif self.edge == "cut tight":
            x = cut(x, trimmed_span(x, SegmentConfig(trim_margin_s=0.0)))
        if self.service_cut:
            x = cut(x, trimmed_span(x, SegmentConfig(trim_margin_s=self.margin)))
        return x


def main() -> None:
    from textneutral import arguments, shifted_input, test_set, weighted_f1

    from koemo.serving.segment import SegmentConfig

    args = arguments(__doc__, {"--margin": {"type": float, "default": SegmentConfig().trim_margin_s,
                                            "help": "the service cut's margin (s)"}})
    import dataclasses

    ts = test_set(args)
    recipe, source, utts, frames, store, settings = ts.recipe, ts.source, ts.utts, ts.frames, ts.store, ts.settings
    models, test, test_ids, text = ts.models, ts.test, ts.test_ids, ts.text
    group_of = {"speaker": lambda u: u.speaker, "test set": lambda u: "<test set>", "clip + corpus": lambda u: u.id}
    scores: dict[str, dict[str, list[float]]] = {}
    for edge in EDGES:
        for service_cut in (False, True):
            row = f"{edge}, {'cut' if service_cut else 'as is'}"
            shifted = dict(frames)
            if edge != "as recorded" or service_cut:
                shifted.update(store.speech(recipe.encoders.speech, test, **settings,
                                            transform=Edges(edge, service_cut, args.margin), progress=False))
            scores[row] = {m: [] for m in MODES}
            for mode in MODES:
                regrouped = [dataclasses.replace(u, speaker=group_of[mode](u)) if u.id in test_ids else u for u in utts]
                view = shifted_input(recipe, frames, shifted, regrouped)
                scores[row][mode] = [weighted_f1(b, view, text, test, source) for b in models]
            print(f"{row}: " + ", ".join(f"{m} {np.mean(scores[row][m]):.3f}" for m in MODES), flush=True)
    print(f"\n| edges of the test clips | {' | '.join(MODES)} |\n|---|" + "---:|" * len(MODES))
    for row, by_mode in scores.items():  # mean ± sample sd over seeds, as the report
        print(f"| {row} | " + " | ".join(f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" for v in by_mode.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
