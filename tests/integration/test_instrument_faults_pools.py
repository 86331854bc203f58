"""The pools instrumented directly (psycopg_pool, asyncpg, psycopg2.pool, redis.asyncio) through
server outages while eight threads (or eight tasks on one event loop) use them: the server stopped,
killed with -9, backends terminated, Redis SHUTDOWN and client kills. As for SQLAlchemy's and
redis-py's pools (test_instrument_faults.py): the application sees the outages, poolwatch's hooks
never fail (``poolwatch_instrumentation_errors_total`` stays 0), nothing stays pending or checked
out, and every checkout counted has its use time."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import psycopg2.pool
import psycopg_pool
import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

import poolwatch
from tests.integration.test_instrument_faults import (
    Workload,
    event_loop_thread,
    postgres_outages,
    redis_outages,
    settled,
)
from tests.poolmetrics import sample

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


pytestmark = [pytest.mark.integration, pytest.mark.destructive]


def test_psycopg_pool_outages_cause_no_internal_error(pg_factory) -> None:
    server = pg_factory()
    app = f"pw-faults-{uuid.uuid4().hex[:8]}"
    pool = psycopg_pool.ConnectionPool(
        f"{server.dsn()} application_name={app} connect_timeout=2",
        min_size=2,
        max_size=6,
        timeout=2,
        open=True,
    )
    pool.wait()
    registry = CollectorRegistry()
    poolwatch.instrument(pool, name="pp", registry=registry, leak_threshold=0.5)

    def work() -> None:
        with pool.connection() as connection:
            connection.execute("SELECT 1")

    try:
        with Workload(registry, work).running() as load:
            postgres_outages(server, load, app)
        assert sample(registry, "pool_connections", "pp", state="used") == 0
    finally:
        pool.close()
    settled(registry, "pp", load)
    assert sample(registry, "pool_connect_errors_total", "pp", reason="refused") >= 1


def test_async_psycopg_pool_outages_cause_no_internal_error(pg_factory) -> None:
    server = pg_factory()
    app = f"pw-faults-{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()
    with event_loop_thread() as run:

        async def build() -> psycopg_pool.AsyncConnectionPool[Any]:
            pool = psycopg_pool.AsyncConnectionPool(
                f"{server.dsn()} application_name={app} connect_timeout=2",
                min_size=2,
                max_size=6,
                timeout=2,
                open=False,
            )
            await pool.open(wait=True)
            return pool

        pool = run(build())
        poolwatch.instrument(pool, name="app", registry=registry, leak_threshold=0.5)

        async def query() -> None:
            async with pool.connection() as connection:
                await connection.execute("SELECT 1")

        try:
            with Workload(registry, lambda: run(query())).running() as load:
                postgres_outages(server, load, app)
            assert sample(registry, "pool_connections", "app", state="used") == 0
        finally:
            run(pool.close())
    settled(registry, "app", load)


def test_asyncpg_pool_outages_cause_no_internal_error(pg_factory) -> None:
    import asyncpg

    server = pg_factory()
    app = f"pw-faults-{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()
    with event_loop_thread() as run:

        async def build() -> asyncpg.Pool:
            return await asyncpg.create_pool(
                server.url(driver="postgresql"),
                min_size=2,
                max_size=6,
                timeout=2,
                server_settings={"application_name": app},
            )

        pool = run(build())
        poolwatch.instrument(pool, name="apg", registry=registry, leak_threshold=0.5)

        async def query() -> None:
            async with pool.acquire(timeout=2) as connection:
                await connection.fetchval("SELECT 1")

        try:
            with Workload(registry, lambda: run(query())).running() as load:
                postgres_outages(server, load, app)
            assert sample(registry, "pool_connections", "apg", state="used") == 0
        finally:
            run(pool.close())
    settled(registry, "apg", load)


def test_psycopg2_pool_outages_cause_no_internal_error(pg_factory) -> None:
    """Six connections for eight threads: psycopg2's pool never waits, so exhaustion is a failure
    (``PoolError``) too, counted as a timeout."""
    server = pg_factory()
    app = f"pw-faults-{uuid.uuid4().hex[:8]}"
    pool = psycopg2.pool.ThreadedConnectionPool(
        2, 6, f"{server.dsn()} application_name={app} connect_timeout=2"
    )
    registry = CollectorRegistry()
    poolwatch.instrument(pool, name="p2", registry=registry, leak_threshold=0.5)

    def work() -> None:
        connection = pool.getconn()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            connection.rollback()
        finally:
            pool.putconn(connection)

    try:
        with Workload(registry, work).running() as load:
            postgres_outages(server, load, app)
        assert sample(registry, "pool_connections", "p2", state="used") == 0
    finally:
        pool.closeall()
    settled(registry, "p2", load)


def test_redis_asyncio_outages_cause_no_internal_error(redis_factory) -> None:
    server = redis_factory()
    name = f"pw-faults-{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()
    with event_loop_thread() as run:

        async def build() -> redis.asyncio.Redis:
            pool = redis.asyncio.ConnectionPool(
                host=server.host,
                port=server.port,
                client_name=name,
                max_connections=6,
                socket_connect_timeout=2,
            )
            return redis.asyncio.Redis(connection_pool=pool)

        client = run(build())
        poolwatch.instrument_redis(client, name="acache", registry=registry, leak_threshold=0.5)
        ping: Callable[[], Awaitable[Any]] = client.ping

        async def call() -> None:
            await ping()

        try:
            with Workload(registry, lambda: run(call())).running() as load:
                redis_outages(server, load, name)
        finally:
            run(client.aclose())
    settled(registry, "acache", load)
