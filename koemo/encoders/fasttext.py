"""``fasttext-ko``: the paper's FastText baseline, trained here on Korean emotion text.

The paper used Korean Wikipedia FastText vectors; none can be downloaded here, so koemo trains
FastText (gensim, skip-gram, 300 dims, character n-grams 2-5 hashed into 200k buckets, so unseen
words still get vectors) on the sentences of ``../shared/data/korean_emotion_text`` split into
morphemes by kiwipiepy, with the evaluation dataset's sentences left out::

    koemo encoders train-fasttext --recipe emotiontts

The vectors go to ``<cache>/encoders/fasttext-ko`` (written to a temporary directory and renamed
into place when complete). The encoder gives one vector per morpheme (``[T, 300]``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from koemo.encoders.base import TEXT_ENCODERS, TextEncoder, fingerprint, short
from koemo.errors import KoemoError

log = logging.getLogger("koemo")
NAME = "fasttext-ko"
VECTORS = "vectors.kv"
META = "meta.json"


def fasttext_dir(root: Path | None = None) -> Path:
    from koemo.paths import cache_root

    return (root or cache_root() / "encoders") / NAME


_KIWI = None


def kiwi():
    global _KIWI
    if _KIWI is None:
        from kiwipiepy import Kiwi

        _KIWI = Kiwi()
    return _KIWI


def morphemes(text: str) -> list[str]:
    """Kiwi morphemes (surface forms) of ``text``; [] for empty text."""
    text = (text or "").strip()
    if not text:
        return []
    return [t.form for t in kiwi().tokenize(text)]


def morphemes_many(texts: list[str]) -> list[list[str]]:
    k = kiwi()
    out = []
    for res in k.tokenize(texts):
        out.append([t.form for t in res])
    return out


def train_fasttext(
    corpus_root: Path,
    exclude_texts: set[str] | None = None,
    out: Path | None = None,
    vector_size: int = 300,
    epochs: int = 5,
    min_count: int = 2,
    max_sentences: int | None = None,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    bucket: int = 200_000,
) -> Path:
    """Train FastText on the Korean text corpora and install it atomically at ``out``."""
    from gensim.models import FastText
    from tqdm import tqdm

    from koemo.data.text_corpora import load_text_corpora
    from koemo.errors import SkipLog

    out = out or fasttext_dir()
    if (out / META).is_file() and not force:
        log.info("%s already trained at %s (use --force to retrain)", NAME, out)
        return out
    skips = SkipLog("sentences")
    examples = load_text_corpora(corpus_root, skips, exclude_texts=exclude_texts)
    total = len(load_text_corpora(corpus_root, SkipLog("sentences"))) if exclude_texts else len(examples)
    texts = sorted({e.text for e in examples})
    if max_sentences:
        rng = np.random.default_rng(seed)
        texts = [texts[i] for i in sorted(rng.permutation(len(texts))[:max_sentences])]
    if not texts:
        raise KoemoError(f"{corpus_root}: no sentences left to train {NAME}")
    t0 = time.time()
    sentences = []
    chunk = 2000
    for i in tqdm(range(0, len(texts), chunk), desc="morphemes (kiwi)", unit="chunk"):
        sentences.extend(morphemes_many(texts[i : i + chunk]))
    sentences = [s for s in sentences if s]
    log.info("%s: %d sentences, %d morphemes, tokenised in %.0f s", NAME, len(sentences),
             sum(map(len, sentences)), time.time() - t0)
    t1 = time.time()
    # 200k n-gram buckets (gensim's default 2M would make a 2.4 GB file for a 12k-word vocabulary)
    logging.getLogger("gensim").setLevel(logging.WARNING)
    model = FastText(vector_size=vector_size, window=5, min_count=min_count, sg=1, min_n=2, max_n=5,
                     bucket=bucket, seed=seed, workers=workers, epochs=epochs)
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=epochs)
    log.info("%s: trained in %.0f s (%d words in the vocabulary)", NAME, time.time() - t1, len(model.wv))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=out.parent))
    try:
        model.wv.save(str(staging / VECTORS))
        import kiwipiepy

        meta = {
            "name": NAME, "vector_size": vector_size, "epochs": epochs, "min_count": min_count,
            "window": 5, "sg": 1, "min_n": 2, "max_n": 5, "bucket": bucket, "seed": seed,
            "sentences": len(sentences), "corpus_sentences": total,
            "excluded_sentences": total - len(examples) if exclude_texts else 0,
            "vocabulary": len(model.wv), "kiwipiepy": kiwipiepy.__version__,
            "corpus": str(corpus_root),
            "sha256": fingerprint(sorted(staging.iterdir())),
        }
        (staging / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        if out.exists():
            old = out.parent / f".old-{NAME}-{os.getpid()}"
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@TEXT_ENCODERS.register(NAME)
class FastTextKo(TextEncoder):
    name = NAME
    dim = 300  # default; the trained model's meta.json decides
    finetunable = False
    max_tokens = 1024  # morphemes

    def __init__(self, layer: int | None = None, model_dir: Path | None = None):
        super().__init__()
        self.model_dir = Path(model_dir) if model_dir else fasttext_dir()
        if not (self.model_dir / META).is_file():
            raise KoemoError(f"{NAME} is not trained (looked in {self.model_dir}); "
                             f"train it with: koemo encoders train-fasttext --recipe emotiontts")
        self.meta = json.loads((self.model_dir / META).read_text(encoding="utf-8"))
        self.dim = int(self.meta["vector_size"])
        self._wv = None

    @property
    def id(self) -> str:
        return f"{NAME}|dim={self.dim}|kiwi={self.meta['kiwipiepy']}|morpheme-forms|model={short(self.meta['sha256'])}"

    def _load(self):
        if self._wv is None:
            from gensim.models import KeyedVectors

            self._wv = KeyedVectors.load(str(self.model_dir / VECTORS), mmap="r")
        return self._wv

    def _encode(self, texts: list[str]) -> tuple[list[np.ndarray], int]:
        wv = self._load()
        out, truncated = [], 0
        for toks in morphemes_many(texts):
            if len(toks) > self.max_tokens:
                truncated += 1
                toks = toks[: self.max_tokens]
            if not toks:
                out.append(np.zeros((1, self.dim), dtype=np.float32))
                continue
            out.append(np.stack([wv[t] for t in toks]).astype(np.float32))
        return out, truncated
