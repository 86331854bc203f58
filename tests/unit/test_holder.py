"""The current holder: ``poolwatch.holder`` as context manager and decorator, and its bounded label."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import sqlalchemy
from prometheus_client import CollectorRegistry
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch.instrument.holder import OTHER, Holder, HolderLabels, current
from tests.poolmetrics import FakeClock


def label_now() -> str | None:
    found = current()
    return None if found is None else found.label


def test_no_holder_is_set_unless_the_application_sets_one() -> None:
    assert label_now() is None


def test_context_manager_sets_and_restores_nested_holders() -> None:
    with poolwatch.holder("nightly-report"):
        assert label_now() == "nightly-report"
        with poolwatch.holder("inner"):
            assert label_now() == "inner"
        assert label_now() == "nightly-report"
    assert label_now() is None


def test_async_with_sets_the_holder_for_the_task_only() -> None:
    seen: dict[str, str | None] = {}

    async def job(name: str) -> None:
        async with poolwatch.holder(name):
            await asyncio.sleep(0)  # the other task runs here with its own holder
            seen[name] = label_now()

    async def main() -> None:
        await asyncio.gather(job("a"), job("b"))
        seen["after"] = label_now()

    asyncio.run(main())
    assert seen == {"a": "a", "b": "b", "after": None}


def test_decorator_on_a_plain_function_is_safe_across_threads() -> None:
    barrier = threading.Barrier(4)
    seen: list[str | None] = []

    @poolwatch.holder("import-job")
    def work() -> str | None:
        barrier.wait(timeout=10)  # all four inside the decorated function at once
        return label_now()

    threads = [threading.Thread(target=lambda: seen.append(work())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == ["import-job"] * 4
    assert label_now() is None
    assert work.__name__ == "work"


def test_decorator_on_a_coroutine_function_keeps_it_a_coroutine_function() -> None:
    @poolwatch.holder("sync-orders")
    async def work(value: int) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return value, label_now()

    assert asyncio.iscoroutinefunction(work)
    assert asyncio.run(work(7)) == (7, "sync-orders")
    assert label_now() is None


def test_the_holder_is_restored_when_the_block_raises() -> None:
    with pytest.raises(KeyError), poolwatch.holder("failing"):
        raise KeyError("x")
    assert label_now() is None


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_a_holder_needs_a_name(bad: object) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        poolwatch.holder(bad)  # type: ignore[arg-type]


def test_a_request_holder_resolves_late_and_settles() -> None:
    scope: dict[str, str] = {}
    holder = Holder(resolve=lambda: f"GET {scope['route']}")
    assert holder.label == ""  # not routed yet: no label, no exception
    scope["route"] = "/orders/{id}"
    assert holder.label == "GET /orders/{id}"
    scope["route"] = "/elsewhere"
    assert holder.label == "GET /orders/{id}"  # kept from the first time it was known
    never_routed = Holder(resolve=lambda: "")
    never_routed.settle(fallback="GET (unrouted)")
    assert never_routed.label == "GET (unrouted)"


def test_labels_are_bounded_longest_holding_first_and_kept() -> None:
    labels = HolderLabels(limit=2)
    ranked = labels.rank({"short": 0.1, "long": 9.0, "middle": 1.0})
    assert ranked == {"long": "long", "middle": "middle", "short": OTHER}
    # A label once given keeps its series; a newcomer, however long it holds, is "other".
    assert labels.rank({"short": 100.0, "middle": 0.01}) == {"short": OTHER, "middle": "middle"}
    assert labels.bound("") == ""


def holder_series(registry: CollectorRegistry, family: str) -> dict[str, float]:
    return {
        s.labels["holder"]: s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == family
    }


def test_use_time_is_labelled_by_holder_and_bounded(tmp_path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}", poolclass=QueuePool)
    registry = CollectorRegistry()
    instrumentation = poolwatch.instrument(engine, name="app", registry=registry)
    instrumentation.recorder.by_holder.labels.limit = 3
    with engine.connect():
        pass  # no holder: the unlabelled series
    for index in range(4):  # N + 1 holders for N = 3 labels: the shortest holder is "other"
        with poolwatch.holder(f"job-{index}"), engine.connect():
            pass
    counts = holder_series(registry, "poolwatch_pool_use_seconds_count")
    assert sum(counts.values()) == 5
    assert counts[""] == 1
    assert len(counts) == 5  # "", three holders, other
    assert counts[OTHER] == 1
    # The leak counters carry the label too; without leaks only the unlabelled series exists.
    assert holder_series(registry, "poolwatch_pool_leaks_total") == {"": 0}


def test_an_application_that_names_no_holder_keeps_its_series(tmp_path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}", poolclass=QueuePool)
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="app", registry=registry, leak_threshold=30)
    for _ in range(3):
        with engine.connect():
            pass
    assert holder_series(registry, "poolwatch_pool_use_seconds_count") == {"": 3}
    assert holder_series(registry, "poolwatch_pool_leaked_connections") == {"": 0}


def test_leak_held_past_the_threshold_and_returned_before_a_scrape_is_counted(tmp_path, caplog) -> None:
    clock = FakeClock()
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}", poolclass=QueuePool)
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="app", registry=registry, leak_threshold=5, clock=clock)
    with poolwatch.holder("nightly-report"):
        connection = engine.connect()
    clock.advance(6)
    connection.close()  # back before any scrape or housekeeping looked
    leaks = holder_series(registry, "poolwatch_pool_leaks_total")
    assert leaks == {"": 0, "nightly-report": 1}
    assert holder_series(registry, "poolwatch_pool_leaked_connections") == {"": 0, "nightly-report": 0}
    warning = [r.getMessage() for r in caplog.records if "held for 6.0s" in r.getMessage()]
    assert len(warning) == 1
    assert "by nightly-report" in warning[0]
    # A connection returned inside the threshold is no leak.
    connection = engine.connect()
    clock.advance(4)
    connection.close()
    assert holder_series(registry, "poolwatch_pool_leaks_total") == {"": 0, "nightly-report": 1}


def test_the_holder_follows_the_context_into_a_copied_context() -> None:
    with poolwatch.holder("outer"):
        copied = contextvars.copy_context()
    assert copied.run(label_now) == "outer"
