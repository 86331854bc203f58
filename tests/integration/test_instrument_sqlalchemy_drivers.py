"""poolwatch.instrument on SQLAlchemy engines of every PostgreSQL driver against a real server:
psycopg2 and psycopg 3 (sync, QueuePool), asyncpg and psycopg 3 async (AsyncAdaptedQueuePool).
Exact counts under threads or tasks, exhaustion (pending while a caller waits, the timeout counted
and its wait in the histogram), and a connection the application drops coming back to the pool."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

import poolwatch
from tests.daemonkit import wait_for
from tests.integration.test_instrument_psycopg_pool import queued
from tests.poolmetrics import sample, waits

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

pytestmark = pytest.mark.integration

SYNC_DRIVERS = ["postgresql+psycopg2", "postgresql+psycopg"]
ASYNC_DRIVERS = ["postgresql+asyncpg", "postgresql+psycopg_async"]


def errors(registry: CollectorRegistry, name: str) -> float:
    return sample(registry, "instrumentation_errors_total", name)


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_threads_are_counted_exactly(pg, driver) -> None:
    registry = CollectorRegistry()
    engine = create_engine(pg.url(driver=driver), pool_size=3, max_overflow=1, pool_timeout=30)
    assert isinstance(engine.pool, QueuePool)
    poolwatch.instrument(engine, name="sync", registry=registry, leak_threshold=60)

    def work() -> None:
        for _ in range(50):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sample(registry, "pool_checkouts_total", "sync") == 400
        assert sample(registry, "pool_wait_seconds_count", "sync") == 400
        assert sample(registry, "pool_use_seconds_count", "sync") == 400
        assert sample(registry, "pool_connections", "sync", state="used") == 0
        assert sample(registry, "pool_pending_requests", "sync") == 0
        assert sample(registry, "pool_max_connections", "sync") == 4
        assert 1 <= sample(registry, "pool_create_seconds_count", "sync") <= 4
        assert errors(registry, "sync") == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_exhaustion_shows_pending_and_counts_the_timeout(pg, driver) -> None:
    registry = CollectorRegistry()
    engine = create_engine(pg.url(driver=driver), pool_size=1, max_overflow=0, pool_timeout=30)
    poolwatch.instrument(engine, name="busy", registry=registry)
    holder = engine.connect()
    got: list[Connection] = []
    waiter = threading.Thread(target=lambda: got.append(engine.connect()))
    waiter.start()
    try:
        wait_for(lambda: sample(registry, "pool_pending_requests", "busy") == 1, what="one caller pending")
        holder.close()  # the waiter gets it
        waiter.join()
        (holder,) = got
        queue = engine.pool
        assert isinstance(queue, QueuePool)
        queue._timeout = 0.5  # the next checkout waits this long at most
        with pytest.raises(PoolTimeoutError):
            engine.connect()
        assert sample(registry, "pool_timeouts_total", "busy") == 1
        count, total = waits(registry, "busy")
        assert count == 3  # two checkouts and the timed-out one
        assert total >= 0.5
        assert sample(registry, "pool_pending_requests", "busy") == 0
    finally:
        holder.close()
        engine.dispose()
    assert sample(registry, "pool_checkouts_total", "busy") == 2
    assert errors(registry, "busy") == 0


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_a_dropped_connection_comes_back_through_the_garbage_collector(pg, driver) -> None:
    registry = CollectorRegistry()
    engine = create_engine(pg.url(driver=driver), pool_size=1, max_overflow=0, pool_timeout=0.5)
    poolwatch.instrument(engine, name="gc", registry=registry, leak_threshold=0.001)

    def drop(engine: Engine) -> None:
        connection = engine.connect()
        connection.execute(text("SELECT 1"))  # never closed: dropped with this frame

    try:
        drop(engine)
        gc.collect()
        with engine.connect() as connection:  # the pool's one connection came back
            assert connection.execute(text("SELECT 1")).scalar() == 1
        assert sample(registry, "pool_checkouts_total", "gc") == 2
        assert sample(registry, "pool_use_seconds_count", "gc") == 2
        assert sample(registry, "pool_connections", "gc", state="used") == 0
        assert sample(registry, "pool_leaked_connections", "gc") == 0
        assert errors(registry, "gc") == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_tasks_are_counted_exactly_with_exhaustion(pg, driver) -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        engine = create_async_engine(pg.url(driver=driver), pool_size=2, max_overflow=1, pool_timeout=30)
        assert isinstance(engine.pool, AsyncAdaptedQueuePool)
        poolwatch.instrument(engine, name="aio", registry=registry, leak_threshold=60)
        try:

            async def work() -> None:
                for _ in range(20):
                    async with engine.connect() as connection:
                        await connection.execute(text("SELECT 1"))

            await asyncio.gather(*(work() for _ in range(10)))
            assert sample(registry, "pool_checkouts_total", "aio") == 200
            assert sample(registry, "pool_wait_seconds_count", "aio") == 200
            assert sample(registry, "pool_use_seconds_count", "aio") == 200
            assert sample(registry, "pool_connections", "aio", state="used") == 0
            assert sample(registry, "pool_pending_requests", "aio") == 0
            assert sample(registry, "pool_max_connections", "aio") == 3

            async def connect() -> Any:
                return await engine.connect()

            held = [await engine.connect() for _ in range(3)]
            waiter = asyncio.create_task(connect())
            await queued(registry, "aio")
            await held.pop().close()
            held.append(await waiter)
            assert sample(registry, "pool_checkouts_total", "aio") == 204
            engine.pool._timeout = 0.2  # the next checkout waits this long at most
            count, total = waits(registry, "aio")
            with pytest.raises(PoolTimeoutError):
                await engine.connect()
            assert sample(registry, "pool_timeouts_total", "aio") == 1
            after_count, after_total = waits(registry, "aio")
            assert after_count == count + 1
            assert after_total - total >= 0.2
            assert sample(registry, "pool_pending_requests", "aio") == 0
            for connection in held:
                await connection.close()
            assert sample(registry, "pool_connections", "aio", state="used") == 0
            assert errors(registry, "aio") == 0
        finally:
            await engine.dispose()

    asyncio.run(asyncio.wait_for(body(), timeout=120))


def test_the_daemon_style_psycopg_async_url_is_accepted(pg) -> None:
    """``postgresql+psycopg_async://`` engines are instrumented like the others (no adapter of
    their own: the pool is SQLAlchemy's)."""

    async def body() -> Any:
        registry = CollectorRegistry()
        engine = create_async_engine(pg.url(driver="postgresql+psycopg_async"), pool_size=1)
        instrumentation = poolwatch.instrument(engine, name="pa", registry=registry)
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        await engine.dispose()
        return registry, instrumentation

    registry, instrumentation = asyncio.run(body())
    assert sample(registry, "pool_checkouts_total", "pa") == 1
    assert instrumentation.server.endswith("/postgres")
