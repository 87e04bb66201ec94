"""A small ``name -> part`` registry, the way ESPnet's ``ClassChoices`` lets a config name its parts.

Adding an ASR backend, encoder or fusion model is one module with ``@REGISTRY.register("name")``
plus one import line in the package's ``__init__``. A registry that knows its base class refuses
anything else at registration (a typo'd base or a stray function fails at import, not at run
time); :meth:`Registry.build` passes per-choice options (``model.options`` in a recipe) to the
class and names an option the class does not take.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Mapping, TypeVar

from koemo.errors import KoemoError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> entry``; with ``base`` every entry must be a subclass of it (``instances=True``:
    an instance of it); without, any callable."""

    def __init__(self, kind: str, base: type | None = None, *, instances: bool = False):
        self.kind = kind
        self.base = base
        self.instances = instances
        self._entries: dict[str, T] = {}

    def _check(self, name: str, obj: Any) -> None:
        if self.base is None:
            ok = callable(obj)
            want = "a callable"
        elif self.instances:
            ok = isinstance(obj, self.base)
            want = f"an instance of {self.base.__name__}"
        else:
            ok = isinstance(obj, type) and issubclass(obj, self.base)
            want = f"a subclass of {self.base.__name__}"
        if not ok:
            raise TypeError(f"{self.kind} '{name}': {obj!r} is not {want}")

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._check(name, obj)
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

    def options_of(self, name: str, common: tuple[str, ...] = ()) -> dict[str, Any]:
        """The keyword options (and their defaults) of ``name``'s constructor, beyond ``common``."""
        params = inspect.signature(self.get(name)).parameters
        return {p.name: p.default for p in params.values()
                if p.kind is p.KEYWORD_ONLY and p.name not in common}

    def build(self, name: str, *args: Any, options: Mapping[str, Any] | None = None,
              where: str = "options", **kwargs: Any) -> T:
        """``entry(*args, **kwargs, **options)``; an option the entry does not take is refused
        with its name and the ones it does take (options are keyword-only parameters)."""
        options = dict(options or {})
        accepted = self.options_of(name, tuple(kwargs))
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            takes = ", ".join(f"{k} (default {v!r})" for k, v in accepted.items()) or "no options"
            raise KoemoError(f"{where}.{unknown[0]}: {self.kind} '{name}' takes {takes}")
        return self.get(name)(*args, **kwargs, **options)  # type: ignore[operator]
