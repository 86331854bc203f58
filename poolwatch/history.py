"""The last minutes of each target in memory: pool use, waiters and server sessions, for trends.

Samples arrive at the probe and census cadence, on scheduler threads; readers are HTTP threads. Each
series is a ring of preallocated ``array('d')`` columns with one row per ``step`` at most (a sample
in the same step as the previous one is merged into it: the larger gauge values, the later counter
values), so memory is fixed when the ``History`` is made, whatever the intervals: ``BYTES`` per
target (about 5 KB with the defaults), and nothing is allocated per sample. The first read after a
sample makes the copy that readers share until the next one (``Trend``); the daemon makes that read
after each job outcome while someone looks at the status, so a request finds the copy made.
"""

from __future__ import annotations

import math
import threading
from array import array
from dataclasses import dataclass
from typing import Final

WINDOW: Final = 900.0  # seconds of history kept and drawn
STEP: Final = 10.0  # at most one row per step
SLOTS: Final = int(WINDOW // STEP) + 1
POOL_COLUMNS: Final = ("at", "used", "pending", "timeouts", "leaks")
SESSION_COLUMNS: Final = ("at", "sessions")
BYTES: Final = SLOTS * (len(POOL_COLUMNS) + len(SESSION_COLUMNS)) * 8


class Ring:
    """Rows of floats in fixed columns, oldest dropped first. Not thread-safe: ``History`` locks."""

    def __init__(self, columns: int, slots: int, step: float) -> None:
        self._columns = [array("d", bytes(8 * slots)) for _ in range(columns)]
        self._slots = slots
        self._step = step
        self._head = 0  # where the next row goes
        self._count = 0

    def add(self, row: tuple[float, ...], merge: tuple[bool, ...]) -> None:
        """Append ``row`` (its first value is the time), or fold it into the last row if both fall in
        the same step: columns flagged in ``merge`` keep the larger value, the others the new one."""
        at = row[0]
        last = (self._head - 1) % self._slots
        if self._count and math.floor(at / self._step) == math.floor(self._columns[0][last] / self._step):
            for column, value, keep_max in zip(self._columns, row, merge, strict=True):
                column[last] = max(column[last], value) if keep_max else value
            return
        for column, value in zip(self._columns, row, strict=True):
            column[self._head] = value
        self._head = (self._head + 1) % self._slots
        self._count = min(self._count + 1, self._slots)

    def columns(self) -> list[list[float]]:
        """Every column, oldest row first."""
        start = (self._head - self._count) % self._slots
        if start + self._count <= self._slots:
            return [column[start : start + self._count].tolist() for column in self._columns]
        return [(column[start:] + column[: self._head]).tolist() for column in self._columns]


@dataclass(frozen=True, slots=True)
class Trend:
    """A copy of one target's history. Gauges are the largest value seen in each step; ``timeouts``
    and ``leaks`` are the pool's running totals (they restart at 0 when the target is rebuilt)."""

    at: list[float]
    used: list[float]
    pending: list[float]
    timeouts: list[float]
    leaks: list[float]
    sessions_at: list[float]
    sessions: list[float]


class History:
    """The trend of one target: pool samples at the probe cadence, session counts at the census's."""

    def __init__(self, window: float = WINDOW, step: float = STEP) -> None:
        slots = int(window // step) + 1
        self.window = window
        self.step = step
        self._lock = threading.Lock()
        self._pool = Ring(len(POOL_COLUMNS), slots, step)
        self._sessions = Ring(len(SESSION_COLUMNS), slots, step)
        # The last copies, until the next sample of each ring.
        self._pool_columns: list[list[float]] | None = None
        self._session_columns: list[list[float]] | None = None
        self._trend: Trend | None = None

    def add_pool(self, at: float, used: int, pending: int, timeouts: int, leaks: int) -> None:
        """A pool sample at Unix time ``at`` (kept to a tenth of a second)."""
        row = (round(at, 1), used, pending, timeouts, leaks)
        with self._lock:
            self._pool.add(row, (False, True, True, False, False))
            self._pool_columns = self._trend = None

    def add_sessions(self, at: float, sessions: int) -> None:
        with self._lock:
            self._sessions.add((round(at, 1), sessions), (False, True))
            self._session_columns = self._trend = None

    def trend(self) -> Trend:
        """A copy of the history, shared by every reader until the next sample: do not modify it.
        A sample of one ring leaves the other ring's lists the same objects (a page that drew them
        finds them drawn)."""
        with self._lock:
            if self._trend is None:
                if self._pool_columns is None:
                    self._pool_columns = self._pool.columns()
                if self._session_columns is None:
                    self._session_columns = self._sessions.columns()
                self._trend = Trend(*self._pool_columns, *self._session_columns)
            return self._trend
