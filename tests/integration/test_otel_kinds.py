"""poolwatch.otel for pools other than SQLAlchemy's, read through the SDK's in-memory reader: a
psycopg_pool pool on real PostgreSQL and a redis-py pool on real Redis, scripted workloads with
exhaustion and a timeout, exact counts, and every counted quantity an integer point (a pool limit
reported as a float included)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import psycopg_pool
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import poolwatch
from poolwatch import otel
from tests.otelread import collect

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.otelread import Family

pytestmark = pytest.mark.integration

POOL = "db.client.connection.pool.name"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def reader(registry: CollectorRegistry) -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    publisher = otel.install(provider, registry=registry)
    yield reader
    publisher.close()
    provider.shutdown()


def assert_counts_are_integers(found: dict[str, Family], pool: str) -> None:
    """Every number point (all of them counts) is an int, never a float such as 7.0."""
    for family in found.values():
        if family.kind == "Histogram":
            continue
        assert family.points, family.name
        for labels, value in family.points:
            assert labels[POOL] == pool, family.name
            assert type(value) is int, (family.name, labels, value)


def test_a_psycopg_pool_pool_with_exhaustion_and_a_timeout(pg, registry, reader) -> None:
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=2, open=True) as pool:
        pool.wait()
        poolwatch.instrument(pool, name="pp", registry=registry)
        for _ in range(5):
            with pool.connection() as connection:
                connection.execute("SELECT 1")
        held = [pool.getconn(), pool.getconn()]
        with pytest.raises(psycopg_pool.PoolTimeout):
            pool.getconn(timeout=0.05)
        found = collect(reader)
        assert_counts_are_integers(found, "pp")
        assert found["db.client.connection.max"].value() == 2
        assert found["db.client.connection.idle.min"].value() == 1
        assert found["db.client.connection.count"].value(db__client__connection__state="used") == 2
        assert found["db.client.connection.count"].value(db__client__connection__state="idle") == 0
        assert found["poolwatch.pool.checkouts"].value() == 7
        assert found["db.client.connection.timeouts"].value() == 1
        assert found["db.client.connection.pending_requests"].value() == 0
        assert found["db.client.connection.wait_time"].value().count == 8
        assert found["db.client.connection.use_time"].value().count == 5
        for connection in held:
            pool.putconn(connection)
        found = collect(reader)
        assert_counts_are_integers(found, "pp")
        assert found["db.client.connection.count"].value(db__client__connection__state="used") == 0
        assert found["db.client.connection.use_time"].value().count == 7
        assert found["poolwatch.instrumentation.errors"].value() == 0


def test_a_redis_blocking_pool_with_exhaustion_and_a_timeout(redis_server, registry, reader) -> None:
    pool = redis.BlockingConnectionPool(
        host=redis_server.host,
        port=redis_server.port,
        password=redis_server.password,
        max_connections=2,
        timeout=0.2,
    )
    poolwatch.instrument_redis(pool, name="cache", registry=registry)
    client = redis.Redis(connection_pool=pool)
    for index in range(4):
        client.set(f"pw-otel-{index}", index)
    held = [pool.get_connection(), pool.get_connection()]
    failed: list[BaseException] = []

    def caller() -> None:
        try:
            client.ping()
        except redis.ConnectionError as exc:
            failed.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join()
    assert len(failed) == 1
    found = collect(reader)
    assert_counts_are_integers(found, "cache")
    assert found["db.client.connection.max"].value() == 2
    assert found["db.client.connection.count"].value(db__client__connection__state="used") == 2
    assert found["poolwatch.pool.checkouts"].value() == 6
    assert found["db.client.connection.timeouts"].value() == 1
    assert found["db.client.connection.wait_time"].value().count == 7
    for connection in held:
        pool.release(connection)
    found = collect(reader)
    assert_counts_are_integers(found, "cache")
    assert found["db.client.connection.count"].value(db__client__connection__state="idle") == 2
    assert found["db.client.connection.use_time"].value().count == 6
    assert found["db.client.connection.create_time"].value().count == 2
    pool.disconnect()
