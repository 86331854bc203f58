"""The private names of psycopg_pool, asyncpg and psycopg2.pool that poolwatch's adapters read exist in
the installed libraries, with the shape the adapters expect (no server needed). redis.asyncio's are
pinned with redis-py's, in test_redis_internals.py, which runs on the oldest supported redis-py too."""

from __future__ import annotations

import asyncio
import inspect

import asyncpg.pool
import psycopg2.pool
import psycopg_pool


def test_psycopg_pool_connects_through_an_overridable_connect_and_reports_sizes() -> None:
    for cls in (psycopg_pool.ConnectionPool, psycopg_pool.AsyncConnectionPool):
        assert callable(cls._connect)
        assert "timeout" in inspect.signature(cls._connect).parameters
        assert callable(cls.getconn)
        assert callable(cls.putconn)
    pool = psycopg_pool.ConnectionPool("dbname=none", min_size=1, max_size=3, open=False)
    stats = pool.get_stats()
    assert {"pool_min", "pool_max", "pool_size", "pool_available"} <= set(stats)
    assert (stats["pool_min"], stats["pool_max"]) == (1, 3)


def test_psycopg_pool_closes_through_close_connection_called_by_the_methods_poolwatch_knows() -> None:
    # The reason of a close is told by the pool's method calling _close_connection(): every such
    # method is one poolwatch knows, so a new one in another version fails here, not in production.
    from poolwatch.instrument.psycopg_pool import _RETURNED, CLOSED_BY

    for cls, is_async in ((psycopg_pool.ConnectionPool, False), (psycopg_pool.AsyncConnectionPool, True)):
        assert inspect.iscoroutinefunction(cls._close_connection) is is_async
        callers = {
            name
            for name, member in vars(cls).items()
            if "_close_connection" in getattr(getattr(member, "__code__", None), "co_names", ())
        }
        assert callers == set(CLOSED_BY), cls
    # The null pools close what nobody waits for where the others close for a closed pool only.
    for cls in (psycopg_pool.NullConnectionPool, psycopg_pool.AsyncNullConnectionPool):
        callers = {
            name
            for name, member in vars(cls).items()
            if "_close_connection" in getattr(getattr(member, "__code__", None), "co_names", ())
        }
        assert callers == set(_RETURNED), cls
        assert issubclass(cls, psycopg_pool.ConnectionPool | psycopg_pool.AsyncConnectionPool)


def test_psycopg_pools_getconn_and_putconn_are_the_bodies_the_hooks_do_themselves() -> None:
    # Else the hooks call the library's methods: right, one frame (or coroutine) slower per call.
    from poolwatch.instrument import psycopg_pool as adapter

    assert adapter._KNOWN_BODIES
    assert adapter._KNOWN_ASYNC_BODIES
    for cls, is_async in ((psycopg_pool.ConnectionPool, False), (psycopg_pool.AsyncConnectionPool, True)):
        for name in ("_check_open_getconn", "_check_pool_putconn"):
            assert not inspect.iscoroutinefunction(getattr(cls, name))
        for name in ("_getconn_with_check_loop", "_maybe_close_connection", "_putconn"):
            assert inspect.iscoroutinefunction(getattr(cls, name)) is is_async
        assert isinstance(cls._REQUESTS_NUM, str)
        assert list(inspect.signature(cls.getconn).parameters) == ["self", "timeout"]
        assert list(inspect.signature(cls.putconn).parameters) == ["self", "conn"]
    # The hooks log as the library does, on its logger.
    assert psycopg_pool.pool.logger is psycopg_pool.pool_async.logger is adapter._LOGGER


def test_asyncpg_pool_holders_queue_and_connect_function() -> None:
    assert {"_queue", "_holders", "_connect"} <= set(asyncpg.pool.Pool.__slots__)
    assert "_pool" in asyncpg.pool.PoolConnectionHolder.__slots__
    assert "__weakref__" in asyncpg.pool.PoolConnectionHolder.__slots__
    queue_class = asyncpg.pool._PoolConnectionHolderQueue
    assert issubclass(queue_class, asyncio.Queue)
    assert inspect.iscoroutinefunction(queue_class.get)
    assert not inspect.iscoroutinefunction(queue_class.put_nowait)
    for public in ("get_size", "get_idle_size", "get_min_size", "get_max_size"):
        assert callable(getattr(asyncpg.pool.Pool, public))


def test_psycopg2_pool_lists_and_connect() -> None:
    pool = psycopg2.pool.ThreadedConnectionPool(0, 2, "dbname=none")  # minconn 0: no connect yet
    assert pool._pool == []
    assert pool._used == {}
    assert (pool.minconn, pool.maxconn) == (0, 2)
    assert callable(psycopg2.pool.AbstractConnectionPool._connect)
