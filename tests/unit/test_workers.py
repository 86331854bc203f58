"""The scheduler's worker pool: workers are reused, a call past its deadline is reported and its
worker replaced (so the others keep their pace), and the pool shrinks back once it returns."""

from __future__ import annotations

import functools
import threading
import time

import pytest

from poolwatch.workers import Workers


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def pool_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("test-pool")}


def test_workers_are_reused_not_started_per_call() -> None:
    workers = Workers(3, name="test-pool")
    done = threading.Semaphore(0)
    seen: set[int] = set()
    lock = threading.Lock()

    def call() -> None:
        with lock:
            seen.add(threading.get_ident())
        done.release()

    try:
        for _ in range(200):
            workers.submit(call, 5.0, lambda: None)
        for _ in range(200):
            assert done.acquire(timeout=20)
        assert len(seen) <= 3
        assert workers.threads == 3
        assert len(pool_threads()) == 4  # three workers and the watchdog
    finally:
        workers.stop()


def test_a_hung_call_is_reported_and_its_worker_replaced() -> None:
    workers = Workers(2, name="test-pool")
    release = threading.Event()
    timed_out = threading.Event()
    finished: list[int] = []
    try:

        def hang() -> None:
            release.wait()

        workers.submit(hang, 0.2, timed_out.set)
        assert timed_out.wait(20)
        for i in range(20):
            workers.submit(functools.partial(finished.append, i), 5.0, pytest.fail)
        assert wait_until(lambda: len(finished) == 20)
        # Two workers still serve other calls while the hung one holds a thread of its own.
        assert workers.threads == 3
        release.set()
        assert wait_until(lambda: workers.threads == 2)
    finally:
        release.set()
        workers.stop()


def test_a_call_that_returns_in_time_is_not_reported() -> None:
    workers = Workers(1, name="test-pool")
    reported = threading.Event()
    returned = threading.Event()
    try:
        workers.submit(returned.set, 0.3, reported.set)
        assert returned.wait(20)
        # Past the deadline: the watchdog has had its chance to report it, and must not have.
        follow = threading.Event()

        def slow() -> None:
            time.sleep(0.5)  # work that outlasts the first call's deadline, not a synchronisation
            follow.set()

        workers.submit(slow, 5.0, pytest.fail)
        assert follow.wait(20)
        assert not reported.is_set()
    finally:
        workers.stop()


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        Workers(0)
