"""One remembered value per slot (a target's part of the status), made again when its inputs change.

The inputs are compared with ``==`` on a tuple, which takes the identity shortcut first: the frozen
records and shared sample lists the status is built from come back as the very same objects until
they change, so a check costs a few pointer comparisons, not a hash of 91 samples or 16 fields.
Memory is one entry per slot (a few per target); the whole cache is emptied if it ever holds
``size`` slots (targets renamed by reloads, one after another).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

T = TypeVar("T")


class SlotCache(Generic[T]):
    """``get(slot, inputs, make)``: the value last made for ``slot`` if its inputs are the same."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._entries: dict[Hashable, tuple[tuple[object, ...], T]] = {}
        self._lock = threading.Lock()

    def get(self, slot: Hashable, inputs: tuple[object, ...], make: Callable[[], T]) -> T:
        entry = self._entries.get(slot)
        if entry is not None and entry[0] == inputs:
            return entry[1]
        value = make()
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.clear()
            self._entries[slot] = (inputs, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
