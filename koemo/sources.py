"""Text sources and training texts: the one place their names are parsed and printed.

A *text source* says where an utterance's text comes from; its name keys manifest columns,
transcript caches, feature-store entries, bundle predictions and report rows alike::

    gold                                  the dataset's human transcript (the golden path)
    asr:<backend>                         a recogniser's transcript of the clean clip
    asr:<backend>@<noise>-<snr>db         ... of the clip with added noise at an SNR (dB)
    asr:<backend>@<noise>-<snr>db-seed<N> ... with noise draw N (N = 0 is left out)

A *training text* (``train.text``) is ``gold``, ``asr:<...>`` (train on the recogniser's text),
or ``cr:<...>`` (both paths, with consistency regularization; ``cr:B`` means ``cr:asr:B``).

:class:`TextSource` and :class:`TrainingText` parse a name (``TextSource.parse``) and print it
back (``str``) so that ``str(TextSource.parse(s)) == s`` for every canonical name; a name that
does not fit the grammar is refused with a one-line :class:`KoemoError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from koemo.errors import KoemoError

GOLD = "gold"
ASR_PREFIX = "asr:"
CR_PREFIX = "cr:"

_BACKEND = r"[A-Za-z0-9][A-Za-z0-9._:/+-]*"
_NAME = re.compile(
    rf"asr:(?P<backend>{_BACKEND}?)(?:@(?P<noise>[a-z]+)-(?P<snr>-?\d+(?:\.\d+)?)db(?:-seed(?P<seed>\d+))?)?")
GRAMMAR = "gold, asr:<backend> or asr:<backend>@<noise>-<snr>db[-seed<N>]"


@dataclass(frozen=True)
class TextSource:
    """``gold`` (``backend`` None) or a recogniser's transcript under an optional noise condition."""

    backend: str | None = None
    noise: str | None = None
    snr: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend is None:
            if self.noise is not None or self.snr is not None or self.seed:
                raise KoemoError("the gold text source has no noise condition")
            return
        if not re.fullmatch(_BACKEND, self.backend) or "@" in self.backend:
            raise KoemoError(f"ASR backend name {self.backend!r}: letters, digits and ._:/+- only")
        if (self.noise is None) != (self.snr is None):
            raise KoemoError("a noise condition needs both a kind (white|pink|babble) and an SNR in dB")
        if self.noise is not None and not re.fullmatch(r"[a-z]+", self.noise):
            raise KoemoError(f"noise kind {self.noise!r}: lower-case letters only")
        if self.snr is not None and not math.isfinite(self.snr):
            raise KoemoError(f"noise SNR must be a finite number of dB, got {self.snr}")
        if self.seed < 0 or (self.seed and self.noise is None):
            raise KoemoError("a noise seed needs a noise condition and must be >= 0")

    @classmethod
    def parse(cls, name: str) -> "TextSource":
        """``gold`` or ``asr:<backend>[@<noise>-<snr>db[-seed<N>]]``, else a one-line error."""
        if not isinstance(name, str):
            raise KoemoError(f"text source {name!r}: expected {GRAMMAR}")
        name = name.strip()
        if name == GOLD:
            return cls()
        m = _NAME.fullmatch(name)
        if not m or not m["backend"]:
            raise KoemoError(f"text source {name!r}: expected {GRAMMAR}")
        snr = float(m["snr"]) if m["snr"] is not None else None
        return cls(m["backend"], m["noise"], snr, int(m["seed"] or 0))

    @classmethod
    def asr(cls, backend: str, noise: str | None = None, snr: float | None = None, seed: int = 0) -> "TextSource":
        """The transcript of ``backend`` (clean, or under ``noise`` at ``snr`` dB with draw ``seed``)."""
        return cls(backend, noise, None if snr is None else float(snr), seed if noise is not None else 0)

    @property
    def is_gold(self) -> bool:
        return self.backend is None

    @property
    def condition(self) -> str:
        """The noise part of the name (``babble-5db``, ``white-0db-seed1``), or ``""`` for clean audio."""
        if self.noise is None:
            return ""
        seed = f"-seed{self.seed}" if self.seed else ""
        return f"{self.noise}-{self.snr:g}db{seed}"

    def __str__(self) -> str:
        if self.backend is None:
            return GOLD
        return f"{ASR_PREFIX}{self.backend}" + (f"@{self.condition}" if self.noise else "")

    def transcribe_command(self) -> str:
        """The command that makes this source's transcripts."""
        if self.backend is None:
            return "(gold text comes with the dataset)"
        extra = f" --noise {self.noise} --snr {self.snr:g}" if self.noise else ""
        extra += f" --seed {self.seed}" if self.seed else ""
        return f"koemo transcribe --backend {self.backend}{extra}"


def source_name(name: str) -> str:
    """The canonical name of a text source (checks the grammar)."""
    return str(TextSource.parse(name))


@dataclass(frozen=True)
class TrainingText:
    """``train.text``: ``gold``, ``asr:<...>`` or ``cr:<...>`` (both paths, consistency regularization)."""

    mode: str  # gold | asr | cr
    stt: TextSource | None = None  # the recogniser's text of the asr and cr modes

    def __post_init__(self) -> None:
        if self.mode not in ("gold", "asr", "cr"):
            raise KoemoError(f"training text mode {self.mode!r}: gold, asr or cr")
        if (self.mode == "gold") != (self.stt is None) or (self.stt is not None and self.stt.is_gold):
            raise KoemoError("the asr and cr training texts need an ASR source, gold needs none")

    @classmethod
    def parse(cls, spec: str) -> "TrainingText":
        """``gold``, ``asr:B[...]``, ``cr:B[...]`` or ``cr:asr:B[...]``, else a one-line error."""
        spec = spec.strip() if isinstance(spec, str) else spec
        try:
            if spec == GOLD:
                return cls("gold")
            if isinstance(spec, str) and spec.startswith(CR_PREFIX):
                rest = spec[len(CR_PREFIX):]
                return cls("cr", TextSource.parse(rest if rest.startswith(ASR_PREFIX) else ASR_PREFIX + rest))
            source = TextSource.parse(spec)
        except KoemoError:
            raise KoemoError(f"training text must be gold, asr:<backend>[@<noise>-<snr>db] or "
                             f"cr:<backend>[@...], got {spec!r}") from None
        if source.is_gold:  # pragma: no cover - gold returned above
            return cls("gold")
        return cls("asr", source)

    def __str__(self) -> str:
        return GOLD if self.stt is None else (CR_PREFIX if self.mode == "cr" else "") + str(self.stt)

    @property
    def train_sources(self) -> list[str]:
        """The text sources training reads: gold, the STT text, or both (gold first)."""
        return {"gold": [GOLD], "asr": [str(self.stt)], "cr": [GOLD, str(self.stt)]}[self.mode]

    @property
    def service_source(self) -> str:
        """The text the model meets in service, so validation uses it: the STT text, or gold."""
        return GOLD if self.stt is None else str(self.stt)
