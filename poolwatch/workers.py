"""Reusable worker threads for scheduled runs, with a watchdog that replaces a worker stuck past its
deadline.

A run does I/O that may hang (a server that accepts TCP and never answers). Starting a thread per run
kept hung runs from holding anyone else up, but cost a thread start per job per tick and as many
threads as runs in flight. Here ``size`` workers take runs from one queue and are reused. A run
carries a deadline; the watchdog, one thread sleeping until the earliest deadline, calls the run's
``on_timeout`` when it passes and starts a replacement worker, so the workers free to take runs stay
``size`` whatever hangs: a hung target costs one thread until its call returns, and delays no other.
When a replaced worker's call does return, that worker leaves (the pool is back to ``size``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


class _Task:
    """One queued or running call. ``settled`` once it returned or the watchdog gave up on it:
    whichever comes first decides, under the pool's lock."""

    __slots__ = ("deadline", "func", "on_timeout", "settled", "timeout")

    def __init__(self, func: Callable[[], None], timeout: float, on_timeout: Callable[[], None]) -> None:
        self.func = func
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.deadline = 0.0
        self.settled = False


class Workers:
    """``size`` reusable threads running submitted calls, each within its own timeout."""

    def __init__(
        self, size: int, *, name: str = "poolwatch-worker", clock: Callable[[], float] = time.monotonic
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self._size = size
        self._name = name
        self._clock = clock
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._deadlines: list[tuple[float, int, _Task]] = []  # heap, under _cond
        self._order = itertools.count()
        self._live = 0  # worker threads started and not ended, hung ones included
        self._hung = 0  # of those, the ones in a call the watchdog gave up on
        self._numbers = itertools.count(1)
        self._stopped = False
        self._watchdog: threading.Thread | None = None

    @property
    def threads(self) -> int:
        """Worker threads alive now (``size`` plus one per call running past its deadline)."""
        with self._cond:
            return self._live

    def submit(self, func: Callable[[], None], timeout: float, on_timeout: Callable[[], None]) -> None:
        """Run ``func`` on a worker; if it is still running ``timeout`` seconds after it started,
        call ``on_timeout`` (on the watchdog thread: it must be quick) and go on without it."""
        with self._cond:
            if self._stopped:
                return
            if self._watchdog is None:
                self._watchdog = self._start(self._watch, "watchdog")
            self._grow()
        self._queue.put(_Task(func, timeout, on_timeout))

    def stop(self) -> None:
        """Let idle workers and the watchdog end; calls still running are left to finish (their
        threads are daemons). Safe to call twice."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            workers = self._live
            self._cond.notify_all()
        for _ in range(workers):
            self._queue.put(None)

    def _grow(self) -> None:
        # Under self._cond. Workers start on demand, up to ``size`` that are not hung.
        if self._live - self._hung < self._size:
            self._live += 1
            self._start(self._work, str(next(self._numbers)))

    def _start(self, run: Callable[[], None], suffix: str) -> threading.Thread:
        thread = threading.Thread(target=run, name=f"{self._name}-{suffix}", daemon=True)
        thread.start()
        return thread

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            with self._cond:
                task.deadline = self._clock() + task.timeout
                heapq.heappush(self._deadlines, (task.deadline, next(self._order), task))
                if self._deadlines[0][2] is task:
                    self._cond.notify()  # an earlier deadline than the watchdog sleeps until
            try:
                task.func()
            except BaseException:  # a run reports its own errors: this is a last resort
                log.exception("a scheduled run raised past its wrapper")
            with self._cond:
                if not task.settled:
                    task.settled = True  # in time: the watchdog drops it from its heap lazily
                    continue
                self._hung -= 1
                if self._live - self._hung <= self._size or self._stopped:
                    continue
                # Replaced while it hung: one worker too many now.
                self._live -= 1
                return
        with self._cond:
            self._live -= 1

    def _watch(self) -> None:
        with self._cond:
            while not self._stopped:
                now = self._clock()
                while self._deadlines and (self._deadlines[0][2].settled or self._deadlines[0][0] <= now):
                    _, _, task = heapq.heappop(self._deadlines)
                    if task.settled:
                        continue  # returned in time
                    task.settled = True
                    self._hung += 1
                    self._grow()
                    self._cond.release()
                    try:
                        task.on_timeout()
                    except Exception:
                        log.exception("reporting a timed-out run failed")
                    finally:
                        self._cond.acquire()
                    now = self._clock()
                wait = self._deadlines[0][0] - now if self._deadlines else None
                self._cond.wait(wait)
