"""A cache keyed by the identity of values that never change once made (frozen records, shared lists).

Hashing a 91-sample list or a 16-field record on every request costs more than what it saves; an
``id()`` costs nothing. Each entry keeps its key objects alive, so an id cannot be reused by another
object while its entry exists; the cache is emptied when it reaches ``size`` entries.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

T = TypeVar("T")


class IdentityCache(Generic[T]):
    """``get(objects, extra, make)``: ``make()``'s result for these very objects and ``extra``."""

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._entries: dict[tuple[Hashable, ...], tuple[tuple[object, ...], T]] = {}
        self._lock = threading.Lock()

    def get(self, objects: tuple[object, ...], extra: tuple[Hashable, ...], make: Callable[[], T]) -> T:
        key = (*map(id, objects), *extra)
        entry = self._entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], objects, strict=True)):
            return entry[1]
        value = make()
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.clear()
            self._entries[key] = (objects, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
