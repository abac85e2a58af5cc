"""Named implementations of one kind (poolings, fusion strategies), selectable by config value."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → implementation table filled by the ``register`` decorator; iterates over sorted names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return add

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[self.validate(name)]

    def validate(self, name: str) -> str:
        """``name`` if registered; else a ValueError listing the choices (for config validators)."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self._entries)}")
        return name
