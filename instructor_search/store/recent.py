"""What was made for the last few allow-lists (a filter's chunk ids), found by identity.

The store hands the same read-only array back for a repeated filter (``matching_chunk_ids``
keeps it per generation), so the array object itself is the key: a reference is kept, so an
id is never reused while its entry lives, and no array is hashed or compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

_V = TypeVar("_V")


class Recent(Generic[_V]):
    """Values made for the last ``size`` keys, newest first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: list[tuple[object, _V]] = []

    def get(self, key: object, make: Callable[[], _V]) -> _V:
        """The value kept for ``key`` (the same object), else ``make()``, kept."""
        for held, value in self._items:
            if held is key:
                return value
        value = make()
        self._items = [(key, value), *self._items[: self.size - 1]]
        return value
