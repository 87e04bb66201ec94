"""ASR quality: CER, WER and sWER, computed the same way for every recogniser.

Normalisation (:func:`normalize`), applied to reference and hypothesis alike:
  1. Unicode NFC (decomposed jamo from some tools compose into syllables) and lower case;
  2. ``%`` -> 퍼센트, Arabic numbers -> their Korean reading (:mod:`koemo.asr.numbers`); Vosk's
     Korean model writes a number it hears as a bracketed class token (``[1] 달`` for 한 달),
     which is read the same way;
  3. every punctuation or symbol character (Unicode categories P*, S*) removed;
  4. whitespace collapsed to single spaces.

* CER: character edit distance with spaces removed (Korean spacing is loose, and the paper's
  sWER exists for the same reason), over the reference's character count.
* WER: word edit distance over whitespace-separated words.
* sWER: WER after both sides are re-spaced by kiwipiepy's spacing model (spaces removed first,
  then ``Kiwi().space(reset_whitespace=True)``), as in Bang et al. 2020: it forgives spacing
  differences that are not recognition errors.

Corpus scores are total edits / total reference length, not a mean of per-utterance rates, so
long utterances weigh by their length. Rates can exceed 1.0 (hallucinated insertions).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

from koemo.asr.numbers import spell_numbers
from koemo.errors import KoemoError


_NUMBER_TOKEN = re.compile(r"\[(\d+)\]")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower().replace("%", "퍼센트")
    text = spell_numbers(_NUMBER_TOKEN.sub(r"\1", text))
    text = "".join(" " if ch.isspace() else ch for ch in text if not unicodedata.category(ch)[0] in "PS")
    return " ".join(text.split())


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions + deletions + insertions), one row at a time."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


@lru_cache(maxsize=1)
def _kiwi():
    try:
        from kiwipiepy import Kiwi
    except ModuleNotFoundError:
        raise KoemoError("sWER needs kiwipiepy: pip install 'koemo[asr]'") from None
    return Kiwi()


def respace(texts: Sequence[str]) -> list[str]:
    """Re-space normalised texts with Kiwi's spacing model (all existing spaces ignored)."""
    if not texts:
        return []
    kiwi = _kiwi()
    joined = ["".join(t.split()) for t in texts]
    # Kiwi's spacing can reintroduce punctuation-free changes only in spacing; normalise again.
    return [" ".join(kiwi.space(t, reset_whitespace=True).split()) if t else "" for t in joined]


@dataclass
class ASRScores:
    utterances: int
    cer: float
    wer: float
    swer: float
    char_edits: int
    ref_chars: int
    word_edits: int
    ref_words: int
    spaced_word_edits: int
    ref_spaced_words: int
    empty_hypotheses: int

    def as_dict(self) -> dict:
        return asdict(self)


def _rate(edits: int, total: int) -> float:
    return edits / total if total else 0.0


def score(refs: Sequence[str], hyps: Sequence[str]) -> ASRScores:
    """Corpus CER/WER/sWER of hypotheses against references (both normalised here)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs_n = [normalize(r) for r in refs]
    hyps_n = [normalize(h) for h in hyps]
    char_edits = ref_chars = word_edits = ref_words = 0
    for r, h in zip(refs_n, hyps_n):
        r_chars, h_chars = r.replace(" ", ""), h.replace(" ", "")
        char_edits += edit_distance(r_chars, h_chars)
        ref_chars += len(r_chars)
        word_edits += edit_distance(r.split(), h.split())
        ref_words += len(r.split())
    spaced_edits = spaced_words = 0
    for r, h in zip(respace(refs_n), respace(hyps_n)):
        spaced_edits += edit_distance(r.split(), h.split())
        spaced_words += len(r.split())
    return ASRScores(
        utterances=len(refs),
        cer=_rate(char_edits, ref_chars),
        wer=_rate(word_edits, ref_words),
        swer=_rate(spaced_edits, spaced_words),
        char_edits=char_edits,
        ref_chars=ref_chars,
        word_edits=word_edits,
        ref_words=ref_words,
        spaced_word_edits=spaced_edits,
        ref_spaced_words=spaced_words,
        empty_hypotheses=sum(1 for h in hyps_n if not h),
    )


def cer(ref: str, hyp: str) -> float:
    return score([ref], [hyp]).cer


def wer(ref: str, hyp: str) -> float:
    return score([ref], [hyp]).wer
