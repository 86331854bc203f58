"""Reading poolwatch_pool_* samples from a registry in tests."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import CollectorRegistry

    from poolwatch.housekeeping import Housekeeper


def sample(registry: CollectorRegistry, name: str, pool: str, **labels: str) -> float:
    """The value of one sample (0 when the series does not exist, to keep assertions short)."""
    value = registry.get_sample_value(f"poolwatch_{name}", {"pool": pool, **labels})
    return 0.0 if value is None else value


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def churning(keeper: Housekeeper, clock: FakeClock) -> Iterator[list[BaseException]]:
    """Housekeeping passes back to back on a thread, the clock a second further each time, while
    the block runs; yields the list the passes' exceptions are collected in (checked after)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def churn() -> None:
        while not stop.is_set():
            clock.advance(1)
            try:
                keeper.run_once()
            except BaseException as exc:
                failures.append(exc)

    background = threading.Thread(target=churn)
    background.start()
    try:
        yield failures
    finally:
        stop.set()
        background.join()
