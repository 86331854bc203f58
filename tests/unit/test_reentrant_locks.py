"""A garbage-collector finalizer may run poolwatch code on a thread that is inside poolwatch already
(a scrape allocates while it holds a lock): that must not deadlock.

The finalizers are real: SQLAlchemy returns a dropped connection from one (and the checkin hook
records it), and ``weakref.finalize(pool, handle.remove)`` is how an application stops exporting a
pool it drops. Each test re-enters the lock on the thread that holds it, as such a finalizer would;
the call runs on a helper thread that must finish."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from poolwatch.instrument.collector import PoolCollector
from poolwatch.instrument.recorder import Recorder

if TYPE_CHECKING:
    from collections.abc import Callable


def finishes(action: Callable[[], None]) -> bool:
    """Run ``action`` on a daemon thread; whether it finished (a deadlock never does)."""
    done = threading.Event()

    def run() -> None:
        action()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(10)


class Source:
    def __init__(self) -> None:
        self.recorder = Recorder("p")
        self.server = ""

    def state(self) -> None:
        return None


def test_removing_a_pool_while_its_collector_is_locked_on_the_same_thread() -> None:
    collector = PoolCollector()
    source = Source()
    collector.add("p", source)

    def finalizer_during_a_scrape() -> None:
        with collector._lock:  # a scrape reading the pools, when the garbage collector runs
            collector.remove("p", source)  # weakref.finalize(pool, handle.remove)

    assert finishes(finalizer_during_a_scrape)
    assert next(iter(collector.rows())).rows == []


def test_a_checkin_while_the_recorder_is_locked_on_the_same_thread() -> None:
    recorder = Recorder("p", leak_threshold=1)
    recorder.leaked.add("entry")

    def finalizer_during_a_snapshot() -> None:
        with recorder._lock:  # a scrape folding samples, when the garbage collector runs
            recorder.returned("entry", 0.0, None, None)  # a dropped connection's checkin, from its finalizer
            recorder.close("overflow")

    assert finishes(finalizer_during_a_snapshot)
    assert recorder.snapshot().closed == {"overflow": 1}
