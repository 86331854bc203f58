"""poolwatch.instrument_redis on redis.asyncio clients and pools against a real Redis: exact counts
under concurrent tasks, exhaustion, a server restart, and nothing visible to the application."""

from __future__ import annotations

import asyncio
import gc
import warnings
import weakref
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

import poolwatch
from tests.integration.test_instrument_psycopg_pool import errors, queued
from tests.poolmetrics import sample, waits

if TYPE_CHECKING:
    from tests.servers import RedisServer

pytestmark = pytest.mark.integration

POOL_CLASSES = [redis.asyncio.ConnectionPool, redis.asyncio.BlockingConnectionPool]


def make_pool(server: RedisServer, pool_class: type[Any], **options: Any) -> Any:
    return pool_class(host=server.host, port=server.port, password=server.password, **options)


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_tasks_are_counted_exactly(redis_server, pool_class) -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        pool = make_pool(redis_server, pool_class, max_connections=4)
        client = redis.asyncio.Redis(connection_pool=pool)
        poolwatch.instrument_redis(client, name="ar", registry=registry)
        assert type(pool) is pool_class

        messages: list[str] = []  # the plain pool raises when all four are out

        async def once() -> None:
            try:
                assert await client.ping()
            except redis.ConnectionError as exc:
                messages.append(str(exc))

        async def work() -> None:
            for _ in range(20):
                await once()

        await asyncio.gather(*(work() for _ in range(10)))  # ten tasks, four connections
        refused = len(messages)
        assert all("Too many connections" in message for message in messages)
        if pool_class is redis.asyncio.BlockingConnectionPool:
            assert refused == 0  # it waits instead
        else:
            assert refused > 0  # contended: some found all four out
        total = 200 - refused
        assert sample(registry, "pool_checkouts_total", "ar") == total
        assert sample(registry, "pool_wait_seconds_count", "ar") == 200  # the refused ones waited too
        assert sample(registry, "pool_timeouts_total", "ar") == refused
        assert sample(registry, "pool_use_seconds_count", "ar") == total
        assert sample(registry, "pool_pending_requests", "ar") == 0
        assert sample(registry, "pool_max_connections", "ar") == 4
        assert sample(registry, "pool_connections", "ar", state="used") == 0
        assert 1 <= sample(registry, "pool_connections", "ar", state="idle") <= 4
        assert errors(registry, "ar") == 0
        await pool.disconnect()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


def test_exhaustion_shows_pending_and_counts_timeouts(redis_server) -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        pool = make_pool(redis_server, redis.asyncio.BlockingConnectionPool, max_connections=1, timeout=60)
        poolwatch.instrument_redis(pool, name="ex", registry=registry)
        held = await pool.get_connection()
        waiter = asyncio.ensure_future(pool.get_connection())
        await queued(registry, "ex")
        await pool.release(held)
        held = await waiter
        assert sample(registry, "pool_pending_requests", "ex") == 0
        pool.timeout = 0.05
        count, total = waits(registry, "ex")
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            await pool.get_connection()
        assert sample(registry, "pool_timeouts_total", "ex") == 1
        after_count, after_total = waits(registry, "ex")
        assert after_count == count + 1
        assert after_total - total >= 0.05
        await pool.release(held)

        plain = make_pool(redis_server, redis.asyncio.ConnectionPool, max_connections=1)
        poolwatch.instrument_redis(plain, name="max", registry=registry)
        held = await plain.get_connection()
        count, total = waits(registry, "max")
        with pytest.raises(redis.ConnectionError, match="Too many connections"):
            await plain.get_connection()
        assert sample(registry, "pool_timeouts_total", "max") == 1
        after_count, after_total = waits(registry, "max")
        assert after_count == count + 1
        assert after_total >= total
        assert sample(registry, "pool_pending_requests", "max") == 0
        await plain.release(held)
        assert errors(registry, "ex") == errors(registry, "max") == 0
        await pool.disconnect()
        await plain.disconnect()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


@pytest.mark.destructive
def test_a_server_restart_counts_refused_connects_and_recovers(redis_factory) -> None:
    server = redis_factory()

    async def body() -> None:
        registry = CollectorRegistry()
        client = redis.asyncio.Redis(host=server.host, port=server.port, password=server.password)
        poolwatch.instrument_redis(client, name="rs", registry=registry)
        assert await client.ping()
        server.stop()
        with pytest.raises(redis.ConnectionError):
            await client.ping()  # the connection in hand fails (its reconnects inside the command too)
        with pytest.raises(redis.ConnectionError):
            await client.ping()  # the pool's connect is refused
        assert sample(registry, "pool_connect_errors_total", "rs", reason="refused") == 1
        server.start()
        assert await client.ping()
        assert sample(registry, "pool_create_seconds_count", "rs") == 2  # the first connect and the last
        assert sample(registry, "pool_pending_requests", "rs") == 0
        assert errors(registry, "rs") == 0
        await client.aclose()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_connects_are_timed_new_connections_and_reconnects(redis_server, pool_class) -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        pool = make_pool(redis_server, pool_class, max_connections=4)
        client = redis.asyncio.Redis(connection_pool=pool)
        assert await client.ping()  # one connection, opened before instrument_redis()
        poolwatch.instrument_redis(client, name="ct", registry=registry)
        assert sample(registry, "pool_create_seconds_count", "ct") == 0
        connection = await pool.get_connection()
        await connection.disconnect()
        await pool.release(connection)
        assert await client.ping()  # the old connection reconnects: timed from then on
        assert sample(registry, "pool_create_seconds_count", "ct") == 1
        held = [await pool.get_connection() for _ in range(3)]  # two new ones
        assert sample(registry, "pool_create_seconds_count", "ct") == 3
        assert sample(registry, "pool_create_seconds_sum", "ct") > 0
        for each in held:
            await pool.release(each)
        assert errors(registry, "ct") == 0
        await client.aclose()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


def test_a_dropped_connection_lives_exactly_as_long_as_without_poolwatch(redis_server) -> None:
    async def drop(pool: Any) -> weakref.ref[Any]:
        connection = await pool.get_connection()
        await connection.send_command("PING")
        assert await connection.read_response() == b"PONG"
        await connection.disconnect()
        return weakref.ref(connection)

    async def body() -> None:
        registry = CollectorRegistry()
        bare = make_pool(redis_server, redis.asyncio.ConnectionPool, max_connections=2)
        pool = make_pool(redis_server, redis.asyncio.ConnectionPool, max_connections=2)
        before = set(vars(pool))
        poolwatch.instrument_redis(pool, name="gc", registry=registry, leak_threshold=0.001)
        assert set(vars(pool)) - before <= set(dir(redis.asyncio.ConnectionPool))
        with pytest.raises(ValueError, match="already instrumented"):
            poolwatch.instrument_redis(pool, name="again", registry=registry)
        for target in (bare, pool):
            target.reset()  # after reset() redis-py holds connections in use weakly
        dropped_bare, dropped = await drop(bare), await drop(pool)
        gc.collect()
        assert dropped_bare() is None
        assert dropped() is None  # poolwatch's ledger holds it weakly too
        assert sample(registry, "pool_leaked_connections", "gc") == 1  # never returned
        assert errors(registry, "gc") == 0
        await pool.disconnect()
        await bare.disconnect()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


def test_instrument_redis_refuses_what_is_not_redis() -> None:
    with pytest.raises(TypeError, match="not a redis-py client or connection pool"):
        poolwatch.instrument_redis(object(), name="nothing", registry=CollectorRegistry())


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
@pytest.mark.parametrize("leak_threshold", [None, 60.0])
def test_methods_patched_on_the_class_later_are_called(redis_server, pool_class, leak_threshold) -> None:
    calls: list[str] = []
    own_get, own_release = pool_class.get_connection, pool_class.release

    async def get_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("get")
        return await own_get(self, *args, **kwargs)

    async def release(self: Any, connection: Any) -> None:
        calls.append("release")
        await own_release(self, connection)

    async def body() -> None:
        registry = CollectorRegistry()
        pool = make_pool(redis_server, pool_class, max_connections=2)
        client = redis.asyncio.Redis(connection_pool=pool)
        poolwatch.instrument_redis(client, name="later", registry=registry, leak_threshold=leak_threshold)
        assert await client.ping()
        assert calls == []  # redis-py's own methods, skipping nothing they do
        with (
            mock.patch.object(pool_class, "get_connection", get_connection),
            mock.patch.object(pool_class, "release", release),
        ):
            assert await client.ping()
        assert calls == ["get", "release"]
        assert await client.ping()
        assert sample(registry, "pool_checkouts_total", "later") == 3
        assert sample(registry, "pool_use_seconds_count", "later") == 3
        assert sample(registry, "pool_connections", "later", state="used") == 0
        assert errors(registry, "later") == 0
        await pool.disconnect()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


def test_deprecated_arguments_still_reach_redis_pys_warning(redis_server) -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        pool = make_pool(redis_server, redis.asyncio.ConnectionPool, max_connections=2)
        poolwatch.instrument_redis(pool, name="args", registry=registry, leak_threshold=60)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await pool.release(await pool.get_connection())
            assert caught == []
            await pool.release(await pool.get_connection("PING"))
        if hasattr(redis.asyncio.ConnectionPool.get_connection, "__wrapped__"):  # deprecated since 5.3
            assert any(issubclass(w.category, DeprecationWarning) for w in caught)
        assert sample(registry, "pool_checkouts_total", "args") == 2
        assert sample(registry, "pool_use_seconds_count", "args") == 2
        assert errors(registry, "args") == 0
        await pool.disconnect()

    asyncio.run(asyncio.wait_for(body(), timeout=60))
