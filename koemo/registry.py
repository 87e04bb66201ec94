"""A tiny ``name -> class`` registry, the way fairseq and ESPnet let a config name its parts.

Adding an ASR backend, encoder or fusion model is one module with ``@REGISTRY.register("name")``
plus one import line in the package's ``__init__``.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from koemo.errors import KoemoError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KoemoError(f"unknown {self.kind} '{name}'; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
