"""poolwatch.otel on real PostgreSQL: a scripted workload read through the SDK's in-memory reader
shows the semantic conventions' instruments with exact names, units, attributes and values, and the
Prometheus export beside it counts the same."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

import poolwatch
from poolwatch import otel
from poolwatch.metrics import LATENCY_BUCKETS
from tests.otelread import collect
from tests.poolmetrics import FakeClock, sample

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy.engine import Engine

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

POOL = "db.client.connection.pool.name"
# name -> (kind, monotonic, unit): the semantic conventions v1.44, and poolwatch's own.
EXPECTED = {
    "db.client.connection.count": ("Sum", False, "{connection}"),
    "db.client.connection.idle.max": ("Sum", False, "{connection}"),
    "db.client.connection.idle.min": ("Sum", False, "{connection}"),
    "db.client.connection.max": ("Sum", False, "{connection}"),
    "db.client.connection.pending_requests": ("Sum", False, "{request}"),
    "db.client.connection.timeouts": ("Sum", True, "{timeout}"),
    "db.client.connection.create_time": ("Histogram", None, "s"),
    "db.client.connection.wait_time": ("Histogram", None, "s"),
    "db.client.connection.use_time": ("Histogram", None, "s"),
    "poolwatch.pool.overflow": ("Sum", False, "{connection}"),
    "poolwatch.pool.checkouts": ("Sum", True, "{checkout}"),
    "poolwatch.pool.connect_errors": ("Sum", True, "{error}"),
    "poolwatch.pool.closes": ("Sum", True, "{connection}"),
    "poolwatch.pool.leaked": ("Sum", False, "{connection}"),
    "poolwatch.pool.leaks": ("Sum", True, "{leak}"),
    "poolwatch.instrumentation.errors": ("Sum", True, "{error}"),
    "poolwatch.pool.inherited_checkouts": ("Sum", True, "{checkout}"),
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def reader(registry) -> Iterator[InMemoryMetricReader]:
    """An SDK provider with an in-memory reader, poolwatch's pools of ``registry`` installed on it."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    publisher = otel.install(provider, registry=registry)
    yield reader
    publisher.close()
    provider.shutdown()


@pytest.fixture
def make_engine(pg: PostgresServer) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(**options: object) -> Engine:
        connect_args = {"application_name": f"pw-otel-{uuid.uuid4().hex[:8]}", "connect_timeout": 5}
        engine = create_engine(pg.url(), connect_args=connect_args, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_every_instrument_has_the_conventions_name_type_unit_and_pool_name(
    make_engine, registry, reader
) -> None:
    engine = make_engine(pool_size=2, max_overflow=3)
    poolwatch.instrument(engine, name="orders", registry=registry)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    found = collect(reader)
    assert {name: (f.kind, f.monotonic, f.unit) for name, f in found.items()} == EXPECTED
    for family in found.values():
        assert family.points, family.name
        assert all(labels[POOL] == "orders" for labels, _ in family.points), family.name
    count = found["db.client.connection.count"]
    assert sorted(labels["db.client.connection.state"] for labels, _ in count.points) == ["idle", "used"]
    assert found["db.client.connection.max"].value() == 5
    assert found["db.client.connection.idle.max"].value() == 2
    assert found["db.client.connection.idle.min"].value() == 0
    wait = found["db.client.connection.wait_time"].value()
    assert tuple(wait.explicit_bounds) == LATENCY_BUCKETS
    reasons = {labels["error.type"] for labels, _ in found["poolwatch.pool.connect_errors"].points}
    assert reasons == {"auth", "refused", "timeout", "dns", "too_many_connections", "other"}


def test_counts_follow_a_scripted_workload_with_exhaustion_and_timeouts(
    make_engine, registry, reader
) -> None:
    engine = make_engine(pool_size=2, max_overflow=0, pool_timeout=1.0)
    poolwatch.instrument(engine, name="busy", registry=registry)
    for _ in range(5):
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    # A Prometheus scrape between two collections folds samples first: both exports still count each.
    assert sample(registry, "pool_wait_seconds_count", "busy") == 5
    held = [engine.connect(), engine.connect()]
    found = collect(reader)
    assert found["db.client.connection.count"].value(db__client__connection__state="used") == 2
    assert found["db.client.connection.count"].value(db__client__connection__state="idle") == 0
    assert found["poolwatch.pool.checkouts"].value() == 7
    assert found["db.client.connection.wait_time"].value().count == 7
    assert found["db.client.connection.use_time"].value().count == 5
    assert found["db.client.connection.create_time"].value().count == 2

    timed_out: list[BaseException] = []

    def caller() -> None:
        try:
            with engine.connect():
                pass
        except PoolTimeoutError as exc:
            timed_out.append(exc)

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for thread in callers:
        thread.start()
    wait_for(lambda: collect(reader)["db.client.connection.pending_requests"].value() == 3)
    for thread in callers:
        thread.join()
    assert len(timed_out) == 3
    for connection in held:
        connection.close()

    found = collect(reader)
    assert found["db.client.connection.pending_requests"].value() == 0
    assert found["db.client.connection.timeouts"].value() == 3
    assert found["poolwatch.pool.checkouts"].value() == 7
    wait = found["db.client.connection.wait_time"].value()
    assert wait.count == 10  # 7 handed out, 3 timed out after a second each
    assert sum(wait.bucket_counts[LATENCY_BUCKETS.index(1.0) + 1 :]) == 3
    assert found["db.client.connection.use_time"].value().count == 7
    assert found["db.client.connection.count"].value(db__client__connection__state="idle") == 2
    # The Prometheus side saw the same samples.
    assert sample(registry, "pool_wait_seconds_count", "busy") == 10
    assert sample(registry, "pool_use_seconds_count", "busy") == 7
    assert sample(registry, "pool_timeouts_total", "busy") == 3
    assert sample(registry, "pool_checkouts_total", "busy") == 7


def test_a_pool_instrumented_after_install_is_published(make_engine, registry, reader) -> None:
    assert collect(reader) == {}
    first = make_engine(pool_size=1)
    poolwatch.instrument(first, name="first", registry=registry)
    with first.connect():
        pass
    sample(registry, "pool_checkouts_total", "first")  # a scrape folds before the collection does
    second = make_engine(pool_size=1)
    poolwatch.instrument(second, name="second", registry=registry)
    for _ in range(2):
        with second.connect():
            pass
    wait = collect(reader)["db.client.connection.wait_time"]
    assert wait.value(db__client__connection__pool__name="first").count == 1
    assert wait.value(db__client__connection__pool__name="second").count == 2


def test_leaks_and_closes_by_reason_under_the_poolwatch_namespace(make_engine, registry, reader) -> None:
    clock = FakeClock()
    engine = make_engine(pool_size=1, max_overflow=1)
    poolwatch.instrument(engine, name="leaky", registry=registry, leak_threshold=30, clock=clock)
    first, overflow = engine.connect(), engine.connect()
    first.close()
    overflow.close()  # the pool is full again: the overflow connection is closed
    held = engine.connect()
    clock.advance(31)
    found = collect(reader)
    assert found["poolwatch.pool.leaked"].value() == 1
    assert found["poolwatch.pool.leaks"].value() == 1
    assert found["poolwatch.pool.closes"].value(poolwatch__close__reason="overflow") == 1
    held.close()
    found = collect(reader)
    assert found["poolwatch.pool.leaked"].value() == 0
    assert found["poolwatch.pool.leaks"].value() == 1
    assert found["db.client.connection.use_time"].value().count == 3


def test_close_stops_publishing_and_install_is_idempotent(make_engine, registry) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    publisher = otel.install(provider, registry=registry)
    assert otel.install(provider, registry=registry) is publisher
    with pytest.raises(ValueError, match="already installed"):
        otel.install(provider, registry=CollectorRegistry())
    engine = make_engine(pool_size=1)
    instrumentation = poolwatch.instrument(engine, name="gone", registry=registry)
    assert len(instrumentation.recorder.waits.sinks) == 1
    publisher.close()
    publisher.close()
    assert len(instrumentation.recorder.waits.sinks) == 0
    with engine.connect():
        pass
    assert sample(registry, "pool_checkouts_total", "gone") == 1
    assert all(not family.points for family in collect(reader).values())
    provider.shutdown()


def test_a_pool_replaced_under_its_name_hands_its_last_samples_on(make_engine, registry, reader) -> None:
    old_engine = make_engine(pool_size=1)
    old = poolwatch.instrument(old_engine, name="orders", registry=registry)
    for _ in range(2):
        with old_engine.connect():
            pass
    # What the daemon does on reload: the old pool goes, a new one counts on from its recorder.
    old.remove()
    old_engine.dispose()
    new_engine = make_engine(pool_size=1)
    poolwatch.instrument(new_engine, name="orders", registry=registry, counts_from=old.recorder)
    del old
    gc.collect()  # the old recorder is gone before the next collection
    with new_engine.connect():
        pass
    found = collect(reader)
    assert found["poolwatch.pool.checkouts"].value() == 3
    assert found["db.client.connection.wait_time"].value().count == 3
    assert found["db.client.connection.use_time"].value().count == 3


def test_use_time_and_leaks_carry_the_holder_and_every_point_the_server(
    make_engine, registry, reader
) -> None:
    engine = make_engine(pool_size=2)
    poolwatch.instrument(engine, name="held", registry=registry)
    with poolwatch.holder("nightly-report"), engine.connect():
        pass
    with engine.connect():
        pass
    found = collect(reader)
    uses = found["db.client.connection.use_time"]
    assert uses.value(poolwatch__holder="nightly-report").count == 1
    unlabelled = [point for labels, point in uses.points if "poolwatch.holder" not in labels]
    assert [point.count for point in unlabelled] == [1]
    server = sample_server(registry)
    for family in found.values():
        assert all(labels["poolwatch.server"] == server for labels, _ in family.points), family.name
    assert sample(registry, "pool_use_seconds_count", "held", holder="nightly-report") == 1


def sample_server(registry: CollectorRegistry) -> str:
    """The server label the Prometheus side gives the pool."""
    for family in registry.collect():
        for item in family.samples:
            if item.labels.get("pool") == "held" and "server" in item.labels:
                return str(item.labels["server"])
    raise AssertionError("no server label")
