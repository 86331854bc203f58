"""Census readings shared by the targets on one server: one query per server per tick."""

from __future__ import annotations

import threading

import pytest

from poolwatch.census.shared import SharedReadings
from poolwatch.errors import CallTimeoutError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_targets_on_one_server_share_one_reading_per_tick() -> None:
    clock = Clock()
    readings: SharedReadings[str] = SharedReadings(clock)
    fetched: list[str] = []

    def fetch(server: str) -> str:
        fetched.append(server)
        return f"{server}#{len(fetched)}"

    for _ in range(100):
        assert readings.read("a", lambda: fetch("a"), max_age=2.5, timeout=1).startswith("a#")
    readings.read("b", lambda: fetch("b"), max_age=2.5, timeout=1)
    assert fetched == ["a", "b"]
    clock.now += 2.5  # the next tick
    assert readings.read("a", lambda: fetch("a"), max_age=2.5, timeout=1) == "a#3"
    assert fetched == ["a", "b", "a"]


def test_a_failed_reading_is_not_shared() -> None:
    readings: SharedReadings[str] = SharedReadings(Clock())

    def broken() -> str:
        raise OSError("connection refused")

    with pytest.raises(OSError, match="refused"):
        readings.read("a", broken, max_age=5, timeout=1)
    assert readings.read("a", lambda: "fresh", max_age=5, timeout=1) == "fresh"


def test_a_hung_reading_holds_the_others_back_no_longer_than_their_timeout() -> None:
    readings: SharedReadings[str] = SharedReadings(Clock())
    started, release = threading.Event(), threading.Event()

    def hanging() -> str:
        started.set()
        release.wait(30)
        return "late"

    first = threading.Thread(target=readings.read, args=("a", hanging), kwargs={"max_age": 5, "timeout": 1})
    first.start()
    try:
        assert started.wait(10)
        with pytest.raises(CallTimeoutError, match="still going"):
            readings.read("a", lambda: "other", max_age=5, timeout=0.2)
    finally:
        release.set()
        first.join(10)
    assert readings.read("a", lambda: "other", max_age=5, timeout=1) == "late"
