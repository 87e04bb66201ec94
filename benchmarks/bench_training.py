"""Seconds per training epoch: frozen features read from the feature store vs. the same frozen
encoders computed on the fly (what training without a store costs), and optionally end-to-end
fine-tuning (the encoders' torch modules in the backward pass), and the same store epoch with
bfloat16 autocast (``train.precision=bf16``).

A small subset is enough to see the ratio (default: the first 16 utterances of the recipe's
manifest; the ratio does not depend on the size). The store is filled first if needed (not timed).

    nice -n 10 python benchmarks/bench_training.py --recipe emotiontts --n 16 [--finetune] [--json]
    python benchmarks/bench_training.py --n 64 --fusion fusion-transformer --hidden 128 --audio-pool 16
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def epoch_loop(batches, features_of, model, optim, labels_of, precision="fp32"):
    """One epoch: for each batch get features (from the store or computed), forward, backward, step."""
    from koemo.training.data import pad
    from koemo.training.losses import ce_sum
    from koemo.training.trainer import autocast

    model.train()
    t0 = time.perf_counter()
    for ids in batches:
        audio, text = features_of(ids)
        a, am = pad(audio)
        t, tm = pad(text)
        optim.zero_grad()
        with autocast("cpu", precision):
            logits = model(a, am, t, tm)
        loss = ce_sum(logits.float(), labels_of(ids)) / len(ids)
        loss.backward()
        optim.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="emotiontts")
    ap.add_argument("--n", type=int, default=16, help="utterances in the subset")
    ap.add_argument("--fusion", default="shallow")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=None, help="model.hidden (default: the recipe's)")
    ap.add_argument("--audio-pool", type=int, default=None, help="model.audio_pool (default: the recipe's)")
    ap.add_argument("--finetune", action="store_true", help="also time end-to-end fine-tuning")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from koemo.cliutil import recipe_from
    from koemo.data.audio import load_audio
    from koemo.data.labels import resolve_label_set
    from koemo.encoders import get_speech_encoder, get_text_encoder
    from koemo.fusion import build_fusion
    from koemo.training.features import load_features

    overrides = [f"model.hidden={args.hidden}"] if args.hidden else []
    overrides += [f"model.audio_pool={args.audio_pool}"] if args.audio_pool else []
    recipe = recipe_from(args.recipe, overrides)
    from koemo.data.prepare import load_or_prepare

    _, utts = load_or_prepare(recipe)
    utts = utts[: args.n]
    by_id = {u.id: u for u in utts}
    labels = list(resolve_label_set(recipe.data.label_set))
    y = {u.id: labels.index(u.label) for u in utts}
    labels_of = lambda ids: torch.tensor([y[i] for i in ids])  # noqa: E731
    ids = [u.id for u in utts]
    batches = [ids[i:i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.perf_counter()
    audio, text, meta = load_features(recipe, utts, ["gold"], progress=False)
    fill = time.perf_counter() - t0
    se = get_speech_encoder(recipe.encoders.speech, layer=recipe.encoders.speech_layer)
    te = get_text_encoder(recipe.encoders.text)

    def fresh():
        torch.manual_seed(0)
        m = build_fusion(args.fusion, se.dim, te.dim, len(labels), hidden=recipe.model.hidden,
                         heads=recipe.model.heads, dropout=recipe.model.dropout,
                         audio_pool=recipe.model.audio_pool)
        return m, torch.optim.Adam(m.parameters(), lr=recipe.train.lr)

    def from_store(b):
        return [audio[i] for i in b], [text["gold"][i] for i in b]

    def on_the_fly(b):
        us = [by_id[i] for i in b]
        a = [se.encode(load_audio(u.audio, start=u.start, end=u.end), where=u.id) for u in us]
        return a, te.encode([u.text for u in us], where=b)

    # warm-up (model loading, first-call costs) outside the timings
    on_the_fly(ids[:1])
    m, o = fresh()
    epoch_loop(batches[:1], from_store, m, o, labels_of)

    m, o = fresh()
    store_s = epoch_loop(batches, from_store, m, o, labels_of)
    m, o = fresh()
    epoch_loop(batches[:1], from_store, m, o, labels_of, "bf16")  # bf16 kernels' first-call costs
    m, o = fresh()
    bf16_s = epoch_loop(batches, from_store, m, o, labels_of, "bf16")
    m, o = fresh()
    fly_s = epoch_loop(batches, on_the_fly, m, o, labels_of)
    result = {"recipe": args.recipe, "utterances": len(ids), "fusion": args.fusion, "hidden": recipe.model.hidden,
              "audio_pool": recipe.model.audio_pool,
              "batch_size": args.batch_size, "speech": meta["speech"]["id"], "text": meta["text"]["id"],
              "threads": torch.get_num_threads(), "store_fill_s": round(fill, 2),
              "epoch_s_from_store": round(store_s, 3), "epoch_s_on_the_fly": round(fly_s, 3),
              "speedup": round(fly_s / max(store_s, 1e-9), 1),
              "epoch_s_from_store_bf16": round(bf16_s, 3), "bf16_speedup": round(store_s / max(bf16_s, 1e-9), 2)}
    if args.finetune:
        from koemo.training.finetune import EndToEnd

        torch.manual_seed(0)
        fusion = build_fusion(args.fusion, se.dim, te.dim, len(labels), hidden=recipe.model.hidden,
                              heads=recipe.model.heads)
        e2e = EndToEnd(se.torch_module(), te.torch_module(), fusion)
        opt = torch.optim.Adam([p for p in e2e.parameters() if p.requires_grad], lr=recipe.train.lr)
        from koemo.training.data import pad

        waves = {u.id: load_audio(u.audio, start=u.start, end=u.end) for u in utts}
        t0 = time.perf_counter()
        for b in batches:
            w, wm = pad([waves[i] for i in b])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(e2e(w, wm, [by_id[i].text for i in b]), labels_of(b))
            loss.backward()
            opt.step()
        result["epoch_s_finetune"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:22} {v}")


if __name__ == "__main__":
    main()
