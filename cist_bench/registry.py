"""One generic name → object registry, used for losses, models and tasks.

Registration is by decorator; a duplicate name is an error; an unknown name raises
:class:`~cist_bench.errors.UnknownNameError` listing the nearest registered names.
Entries may also be lazy (``"package.module:attr"``), imported on first use, so optional
heavy dependencies are only needed by whoever asks for them.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cist_bench.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, candidates: list[str], n: int = 3) -> str:
    """A short hint naming the closest candidates, or listing them all when none is close."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "known: " + ", ".join(sorted(candidates))


class Registry(Generic[T]):
    """A named collection of objects of one kind (e.g. loss classes)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T | str] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("kd")`` (defaults to the object's ``__name__``)."""

        def deco(obj: T) -> T:
            self.add(name or obj.__name__, obj)  # type: ignore[attr-defined]
            return obj

        return deco

    def add(self, name: str, obj: T | str) -> None:
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``."""
        if name in self._items:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._items[name] = obj

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}: {did_you_mean(name, list(self._items))}"
            )
        obj = self._items[name]
        if isinstance(obj, str):  # lazy entry
            module, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._items[name] = obj
        return obj  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
