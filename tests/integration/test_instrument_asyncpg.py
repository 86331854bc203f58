"""poolwatch.instrument on asyncpg pools against a real PostgreSQL: exact counts under concurrent
tasks, exhaustion, a server restart, and nothing visible to the application."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

import poolwatch
from tests.integration.test_instrument_psycopg_pool import errors, queued
from tests.poolmetrics import sample, waits

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration


def run(server: PostgresServer, body: Callable[[str], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(server.url(driver="postgresql")), timeout=60))


@contextlib.asynccontextmanager
async def pool_of(dsn: str, **options: Any) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool, terminated at the end (a failed test may leave connections acquired)."""
    pool = await asyncpg.create_pool(dsn, **options)
    try:
        yield pool
    finally:
        pool.terminate()


def test_tasks_are_counted_exactly(pg) -> None:
    async def body(dsn: str) -> None:
        registry = CollectorRegistry()
        async with pool_of(dsn, min_size=1, max_size=4) as pool:
            poolwatch.instrument(pool, name="apg", registry=registry)

            async def work() -> None:
                for _ in range(10):
                    async with pool.acquire() as connection:
                        assert await connection.fetchval("SELECT 1") == 1
                    assert await pool.fetchval("SELECT 2") == 2  # acquires and releases too

            await asyncio.gather(*(work() for _ in range(10)))
            assert sample(registry, "pool_checkouts_total", "apg") == 200
            assert sample(registry, "pool_wait_seconds_count", "apg") == 200
            assert sample(registry, "pool_use_seconds_count", "apg") == 200
            assert sample(registry, "pool_pending_requests", "apg") == 0
            assert sample(registry, "pool_max_connections", "apg") == 4
            assert sample(registry, "pool_min_idle", "apg") == 1
            assert sample(registry, "pool_size", "apg") == 4
            assert sample(registry, "pool_connections", "apg", state="idle") == 4
            assert sample(registry, "pool_connections", "apg", state="used") == 0
            assert sample(registry, "pool_create_seconds_count", "apg") == 3  # the first came before
            assert errors(registry, "apg") == 0

    run(pg, body)


def test_exhaustion_shows_pending_and_counts_acquire_timeouts(pg) -> None:
    async def body(dsn: str) -> None:
        registry = CollectorRegistry()
        async with pool_of(dsn, min_size=2, max_size=2) as pool:
            poolwatch.instrument(pool, name="ex", registry=registry)
            held = [await pool.acquire(), await pool.acquire()]
            assert sample(registry, "pool_connections", "ex", state="used") == 2
            waiter = asyncio.ensure_future(pool.acquire(timeout=60))
            await queued(registry, "ex")
            await pool.release(held.pop())
            held.append(await waiter)
            assert sample(registry, "pool_pending_requests", "ex") == 0
            count, total = waits(registry, "ex")
            with pytest.raises(asyncio.TimeoutError):
                await pool.acquire(timeout=0.05)
            assert sample(registry, "pool_timeouts_total", "ex") == 1
            after_count, after_total = waits(registry, "ex")
            assert after_count == count + 1
            assert after_total - total >= 0.05
            assert sample(registry, "pool_pending_requests", "ex") == 0
            assert sample(registry, "pool_checkouts_total", "ex") == 3
            for connection in held:
                await pool.release(connection)
            assert errors(registry, "ex") == 0

    run(pg, body)


@pytest.mark.destructive
def test_a_server_restart_counts_refused_connects_and_recovers(pg_factory) -> None:
    server = pg_factory()

    async def body(dsn: str) -> None:
        registry = CollectorRegistry()
        async with pool_of(dsn, min_size=1, max_size=1) as pool:
            poolwatch.instrument(pool, name="rs", registry=registry)
            server.stop()
            with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                await pool.fetchval("SELECT 1")  # the connection is gone
            with pytest.raises(OSError):
                await pool.fetchval("SELECT 1")  # reconnecting is refused
            assert sample(registry, "pool_connect_errors_total", "rs", reason="refused") >= 1
            server.start()
            assert await pool.fetchval("SELECT 1") == 1
            assert sample(registry, "pool_create_seconds_count", "rs") == 1
            assert sample(registry, "pool_pending_requests", "rs") == 0
            assert errors(registry, "rs") == 0

    run(server, body)


def test_the_pool_stays_the_applications_and_nothing_is_kept_alive(pg) -> None:
    async def body(dsn: str) -> None:
        registry = CollectorRegistry()
        async with pool_of(dsn, min_size=1, max_size=2) as pool:
            queue_before = set(vars(pool._queue))
            poolwatch.instrument(pool, name="inv", registry=registry, leak_threshold=0.001)
            assert type(pool) is asyncpg.Pool
            assert set(vars(pool._queue)) - queue_before <= set(dir(type(pool._queue)))
            with pytest.raises(ValueError, match="already instrumented"):
                poolwatch.instrument(pool, name="again", registry=registry)

            class Marker:
                pass

            async def checkout_with_a_local() -> tuple[Any, weakref.ref[Marker]]:
                marker = Marker()  # a local of the checking-out coroutine
                return await pool.acquire(), weakref.ref(marker)

            connection, marker = await checkout_with_a_local()
            gc.collect()
            assert marker() is None  # leak detection keeps no frame (and so no local) alive
            assert sample(registry, "pool_leaked_connections", "inv") == 1
            await pool.release(connection)
            assert sample(registry, "pool_leaked_connections", "inv") == 0
            assert errors(registry, "inv") == 0

    run(pg, body)


def test_a_pool_not_yet_awaited_is_refused_and_left_as_it_was(pg) -> None:
    async def body(dsn: str) -> None:
        pool = asyncpg.create_pool(dsn, min_size=1, max_size=1)
        with pytest.raises(ValueError, match="not initialised yet"):
            poolwatch.instrument(pool, name="early", registry=CollectorRegistry())
        await pool
        registry = CollectorRegistry()
        poolwatch.instrument(pool, name="early", registry=registry)
        assert await pool.fetchval("SELECT 1") == 1
        assert sample(registry, "pool_checkouts_total", "early") == 1
        await pool.close()

    run(pg, body)
