"""One census reading per server per tick, shared by every target on that server.

``pg_stat_activity`` and Redis' ``CLIENT LIST`` describe the whole server, whichever database a
target names: with a hundred targets on one server, each census read the same rows a hundred times a
tick. ``SharedReadings.read()`` hands out a reading taken less than ``max_age`` ago (half the census
interval: younger than the next tick) to every target with the same key, and only the first census
of a tick queries the server. The key is the server and the login (what a role may see differs per
role); each target still counts the reading with its own label bounds.

A failed reading is not kept: the next target tries again. A reading that hangs holds the key's lock:
the other targets on that server wait for it at most their own timeout (their runs would hang on
that server anyway).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Generic, TypeVar

from poolwatch.errors import CallTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

T = TypeVar("T")


class _Slot(Generic[T]):
    __slots__ = ("lock", "taken", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0.0
        self.value: T | None = None


class SharedReadings(Generic[T]):
    """The last reading of each server, handed out while it is younger than ``max_age``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[Hashable, _Slot[T]] = {}

    def read(self, key: Hashable, fetch: Callable[[], T], *, max_age: float, timeout: float) -> T:
        """A reading of ``key``'s server not older than ``max_age`` seconds: the shared one, or
        ``fetch()``'s (kept for the others). Raises what ``fetch`` raised, or ``CallTimeoutError``
        if another target's reading of the server is still going after ``timeout`` seconds."""
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
        if not slot.lock.acquire(timeout=timeout):
            raise CallTimeoutError(
                f"the server's census, taken for another target, is still going after {timeout:g}s"
            )
        try:
            if slot.value is not None and self._clock() - slot.taken < max_age:
                return slot.value
            started = self._clock()
            slot.value = None
            value = fetch()
            slot.value, slot.taken = value, started
            return value
        finally:
            slot.lock.release()
