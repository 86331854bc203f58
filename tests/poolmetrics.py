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
    """The sum of the samples of ``name`` with these labels, whatever their other labels (``server``,
    ``holder``); 0 when there is none, to keep assertions short."""
    wanted = {"pool": pool, **labels}
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == f"poolwatch_{name}" and wanted.items() <= s.labels.items()
    )


def waits(registry: CollectorRegistry, pool: str) -> tuple[float, float]:
    """The wait histogram's count and sum: how many checkouts waited (or gave up), for how long."""
    return sample(registry, "pool_wait_seconds_count", pool), sample(registry, "pool_wait_seconds_sum", pool)


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
