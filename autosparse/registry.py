"""Name -> implementation registries for every extensible family (models, datasets, criteria, ...)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError):
    """Raised for a name no registry entry has; the message lists the known names."""


class Registry(Generic[T]):
    """A mapping from names to implementations of one family, filled by a decorator."""

    def __init__(self, family: str):
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.family} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def registered(self) -> list[str]:
        """Names in the order they were registered."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
