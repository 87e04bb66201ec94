"""Normalising a group whose clips are not a mix of emotions: the one-emotion guard, measured.

    python benchmarks/session_mix.py                 # the table in docs/voice.md
    python benchmarks/session_mix.py --seeds 5 --channels clean --json out.json

A session (a call, ``POST /v1/predict?session=ID``, every file of a ``koemo predict`` call) is
normalised by its own statistics, which removes what its clips share: the voice and the channel,
and, where the clips are one emotion, the emotion. The protocols' groups are a speaker reading
every sentence in every emotion, the best case. This re-scores the recipe's text-neutral fold
bundles (one per seed; speakers and sentences never heard) on sessions cut from their 100 test
clips:

- ``speaker, every emotion``: each test speaker's 20 clips (the protocol's groups);
- ``speaker, one emotion``: each speaker's clips of one emotion (an angry caller);
- ``folder of one emotion``: all clips of one emotion (a corpus laid out by label);
- ``random mix a``: 20 sessions per speaker of 4-12 of the speaker's clips, the emotions drawn
  with shares from a Dirichlet(a) (a = 0.5: mostly one or two emotions; a = 3: near balanced);
- ``folder of everything``: the 100 clips together.

Three ways to normalise each session: ``own`` (its statistics), ``corpus`` (the training corpus's,
as a lone clip), and ``guarded``: its own unless :func:`one_emotion` finds
at least ``ONE_EMOTION_SHARE`` of its clips' votes on one label (each clip judged alone by its
voice on the corpus statistics, the text blanked), then the corpus's. Under
each ``--channels`` (``benchmarks/channel_shift.py``'s; a shifted clip's votes and input come
from the shifted frames, the corpus statistics stay the clean ones the bundle stores). Weighted
F1 over all sessions' clips of a kind, mean ± sd over seeds; ``fired``: the share of sessions
the guard sent to the corpus statistics. The bundles have one head: the shipped model serves a
lone clip with its second head, so the ``corpus`` column is the first head's. ``--json`` also
keeps every session's probabilities, votes and mean top probability (``sessions``), to try other
guards without re-scoring. The guard is measured, not built: under a new channel its votes
collapse onto one label (docs/voice.md, "When the speaker is unknown").
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = ("speaker, every emotion", "speaker, one emotion", "folder of one emotion", "random mix 0.5",
         "random mix 3", "folder of everything")
WAYS = ("own", "corpus", "guarded")
ONE_EMOTION_SHARE = 0.7


def one_emotion(votes: Counter, share: float) -> bool:
    """Whether at least ``share`` of a session's votes name one label (the guard measured here)."""
    total = sum(votes.values())
    return bool(total) and votes.most_common(1)[0][1] / total >= share


def sessions_of(test: list, labels: list, rng: np.random.Generator) -> dict[str, list[list]]:
    """Each kind's sessions (lists of test utterances)."""
    by: dict = defaultdict(lambda: defaultdict(list))
    for u in test:
        by[u.speaker][u.label].append(u)
    out: dict[str, list[list]] = {
        "speaker, every emotion": [[u for u in test if u.speaker == s] for s in by],
        "speaker, one emotion": [clips for emo in by.values() for clips in emo.values()],
        "folder of one emotion": [[u for u in test if u.label == e] for e in labels],
        "folder of everything": [list(test)],
    }
    for alpha in (0.5, 3):
        kind = out.setdefault(f"random mix {alpha:g}", [])
        for emo in by.values():
            for _ in range(20):
                shares = rng.dirichlet([alpha] * len(labels))
                left = {e: list(rng.permutation(len(emo[e]))) for e in emo}
                chosen = [emo[e][left[e].pop()] for e in rng.choice(labels, size=int(rng.integers(4, 13)), p=shares)
                          if left.get(e)]
                if len(chosen) >= 3:
                    kind.append(chosen)
    return out


def main() -> None:
    from textneutral import arguments, test_set

    args = arguments(__doc__, {"--channels": {"default": "clean,telephone,reverb,babble 10 dB,quiet -20 dB",
                                              "help": "comma-separated, of benchmarks/channel_shift.py"}})
    from sklearn.metrics import f1_score

    from channel_shift import Channel
    from koemo.fusion.inputs import Moments, Normaliser, group_views
    from koemo.training.data import FeatureData
    from koemo.training.trainer import predict_proba

    ts = test_set(args)
    recipe, frames, test = ts.recipe, ts.frames, ts.test
    enc = recipe.encoders
    norm = Normaliser.fit(enc.normalise, Moments.sum(Moments.of(a) for a in frames.values()), enc.normalise_min_clips)
    dim = next(iter(ts.text[ts.source].values())).shape[-1]
    blank = {ts.source: {u.id: np.zeros((1, dim), np.float32) for u in test}}  # an empty transcript
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    table: dict = {}
    for channel in channels:
        shifted = dict(frames)
        if channel != "clean":
            shifted.update(ts.store.speech(enc.speech, test, **ts.settings, transform=Channel(channel, tuple(ts.utts))))

        def probs(b, clips, groups, text) -> np.ndarray:
            v = group_views([{u.id: shifted[u.id] for u in clips}], groups, "stats", norm)[0]
            data = FeatureData({k: x.astype(np.float16) for k, x in v.items()}, text,
                               {u.id: u.label for u in clips}, b.labels)
            return np.asarray(predict_proba(b.model, data, [u.id for u in clips], ts.source))

        scores: dict = defaultdict(lambda: defaultdict(list))
        records = table.setdefault("sessions", [])
        for seed, b in enumerate(ts.models):
            labels = list(b.labels)
            alone = {u.id: u.id for u in test}
            corpus = dict(zip([u.id for u in test], probs(b, test, alone, ts.text)))
            votes = {u.id: labels[int(p.argmax())] for u, p in zip(test, probs(b, test, alone, blank))}
            for kind, sessions in sessions_of(test, labels, np.random.default_rng(seed)).items():
                truth, pred, fired = [], defaultdict(list), 0
                for s in sessions:
                    own = probs(b, s, {u.id: "<session>" for u in s}, ts.text)
                    lone = np.stack([corpus[u.id] for u in s])
                    hit = len(s) >= norm.min_clips and one_emotion(Counter(votes[u.id] for u in s), ONE_EMOTION_SHARE)
                    fired += bool(hit)
                    records.append({"channel": channel, "seed": seed, "kind": kind, "n": len(s),
                                    "share": Counter(votes[u.id] for u in s).most_common(1)[0][1] / len(s),
                                    "conf_own": float(own.max(1).mean()), "conf_corpus": float(lone.max(1).mean()),
                                    "truth": [labels.index(u.label) for u in s],
                                    "own": own.round(4).tolist(), "corpus": lone.round(4).tolist()})
                    truth += [u.label for u in s]
                    for way, p in (("own", own), ("corpus", lone), ("guarded", lone if hit else own)):
                        pred[way] += [labels[int(i)] for i in p.argmax(1)]
                for way in WAYS:
                    scores[kind][way].append(f1_score(truth, pred[way], average="weighted"))
                scores[kind]["fired"].append(fired / len(sessions))
        table[channel] = {k: {w: [float(x) for x in v] for w, v in ways.items()} for k, ways in scores.items()}
        print(f"{channel}: " + "; ".join(f"{k} " + " / ".join(f"{np.mean(table[channel][k][w]):.3f}" for w in WAYS)
                                        for k in KINDS), flush=True)
    print("\n| channel | sessions | own statistics | corpus statistics | guarded | guard fired |\n|---|---|---:|---:|---:|---:|")
    for channel, kinds in table.items():
        if channel == "sessions":
            continue
        for k in KINDS:
            row = kinds[k]
            print(f"| {channel} | {k} | " + " | ".join(f"{np.mean(row[w]):.3f} ± {np.std(row[w], ddof=1):.3f}" for w in WAYS)
                  + f" | {np.mean(row['fired']):.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
