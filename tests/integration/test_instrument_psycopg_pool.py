"""poolwatch.instrument on psycopg_pool pools (sync and async) against a real PostgreSQL: exact counts
under concurrency, exhaustion, a server restart, and nothing visible to the application."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any
from unittest import mock

import psycopg
import psycopg_pool
import pytest
from prometheus_client import CollectorRegistry

import poolwatch
from tests.daemonkit import wait_for
from tests.poolmetrics import FakeClock, sample, waits

pytestmark = pytest.mark.integration


def errors(registry: CollectorRegistry, name: str) -> float:
    return sample(registry, "instrumentation_errors_total", name)


def test_threads_are_counted_exactly(pg) -> None:
    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=2, max_size=4, open=True) as pool:
        pool.wait()
        poolwatch.instrument(pool, name="pp", registry=registry)

        def work() -> None:
            for _ in range(25):
                with pool.connection() as connection:
                    connection.execute("SELECT 1")

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sample(registry, "pool_checkouts_total", "pp") == 200
        assert sample(registry, "pool_wait_seconds_count", "pp") == 200
        assert sample(registry, "pool_use_seconds_count", "pp") == 200
        assert sample(registry, "pool_pending_requests", "pp") == 0
        assert sample(registry, "pool_max_connections", "pp") == 4
        assert sample(registry, "pool_min_idle", "pp") == 2
        size = sample(registry, "pool_size", "pp")
        assert 2 <= size <= 4
        assert sample(registry, "pool_connections", "pp", state="idle") == size
        assert sample(registry, "pool_connections", "pp", state="used") == 0
        assert errors(registry, "pp") == 0


def test_exhaustion_shows_pending_and_counts_timeouts(pg) -> None:
    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=1, open=True) as pool:
        poolwatch.instrument(pool, name="ex", registry=registry)
        held = pool.getconn()
        assert sample(registry, "pool_connections", "ex", state="used") == 1
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=60)))
        waiter.start()
        wait_for(lambda: sample(registry, "pool_pending_requests", "ex") == 1, what="a waiting caller")
        pool.putconn(held)
        waiter.join()
        assert sample(registry, "pool_pending_requests", "ex") == 0
        count, total = waits(registry, "ex")
        with pytest.raises(psycopg_pool.PoolTimeout):
            pool.getconn(timeout=0.05)
        assert sample(registry, "pool_timeouts_total", "ex") == 1
        after_count, after_total = waits(registry, "ex")
        assert after_count == count + 1
        assert after_total - total >= 0.05
        assert sample(registry, "pool_pending_requests", "ex") == 0
        assert sample(registry, "pool_checkouts_total", "ex") == 2
        pool.putconn(got[0])  # type: ignore[arg-type]
        assert errors(registry, "ex") == 0


@pytest.mark.destructive
def test_a_server_restart_counts_refused_connects_and_recovers(pg_factory) -> None:
    server = pg_factory()
    registry = CollectorRegistry()
    pool = psycopg_pool.ConnectionPool(server.dsn(), min_size=2, max_size=2, open=True, reconnect_timeout=300)
    try:
        pool.wait()
        poolwatch.instrument(pool, name="rs", registry=registry)
        server.stop()
        pool.check()  # finds both connections dead and asks for new ones: refused
        wait_for(
            lambda: sample(registry, "pool_connect_errors_total", "rs", reason="refused") >= 1,
            what="a refused connect counted",
        )
        # The two connections being reopened count in the pool's size, neither idle nor used.
        assert pool.get_stats()["pool_size"] == 2
        assert sample(registry, "pool_connections", "rs", state="idle") == 0
        assert sample(registry, "pool_connections", "rs", state="used") == 0
        server.start()
        wait_for(lambda: pool.get_stats().get("pool_available", 0) == 2, what="the pool refilled")
        with pool.connection() as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert sample(registry, "pool_create_seconds_count", "rs") >= 2
        assert errors(registry, "rs") == 0
    finally:
        pool.close()


def test_the_pool_and_its_connections_stay_the_applications(pg) -> None:
    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=2, open=True) as pool:
        before = set(vars(pool))
        poolwatch.instrument(pool, name="inv", registry=registry, leak_threshold=60)
        assert type(pool) is psycopg_pool.ConnectionPool
        assert set(vars(pool)) - before <= set(dir(psycopg_pool.ConnectionPool))
        with (
            psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=1, open=True) as bare,
            bare.connection() as plain,
            pool.connection() as connection,
        ):
            assert set(vars(connection)) == set(vars(plain))
            assert type(connection) is psycopg.Connection
        with pytest.raises(ValueError, match="already instrumented"):
            poolwatch.instrument(pool, name="again", registry=registry)
        assert errors(registry, "inv") == 0


def test_a_dropped_connection_is_not_kept_alive_and_is_reported_as_leaked(pg) -> None:
    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=2, open=True) as pool:
        poolwatch.instrument(pool, name="gc", registry=registry, leak_threshold=0.001)

        def drop() -> weakref.ref[object]:
            connection = pool.getconn()
            connection.execute("SELECT 1")
            return weakref.ref(connection)

        dropped = drop()
        gc.collect()
        assert dropped() is None  # poolwatch holds no reference to it
        wait_for(lambda: sample(registry, "pool_leaked_connections", "gc") == 1, what="the leak seen")
        assert errors(registry, "gc") == 0


def test_unsupported_objects_name_what_is_supported() -> None:
    with pytest.raises(TypeError, match=r"psycopg_pool\.ConnectionPool.*asyncpg\.Pool"):
        poolwatch.instrument(object(), name="nothing", registry=CollectorRegistry())


async def queued(registry: CollectorRegistry, name: str, count: int = 1) -> None:
    """Yield to the other tasks until ``count`` of them wait for a connection (20 s at most)."""

    for _ in range(2000):
        if sample(registry, "pool_pending_requests", name) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} waiting task(s) not seen within 20 s")


def test_tasks_on_an_async_pool_are_counted_exactly_with_exhaustion(pg) -> None:
    async def run() -> None:
        registry = CollectorRegistry()
        async with psycopg_pool.AsyncConnectionPool(pg.dsn(), min_size=1, max_size=3, open=False) as pool:
            await pool.wait()
            poolwatch.instrument(pool, name="apg", registry=registry)
            assert type(pool) is psycopg_pool.AsyncConnectionPool

            async def work() -> None:
                for _ in range(20):
                    async with pool.connection() as connection:
                        await connection.execute("SELECT 1")

            await asyncio.gather(*(work() for _ in range(10)))
            assert sample(registry, "pool_checkouts_total", "apg") == 200
            assert sample(registry, "pool_use_seconds_count", "apg") == 200
            assert sample(registry, "pool_pending_requests", "apg") == 0
            assert sample(registry, "pool_max_connections", "apg") == 3

            held = [await pool.getconn() for _ in range(3)]
            waiter = asyncio.create_task(pool.getconn(timeout=60))
            await queued(registry, "apg")
            await pool.putconn(held.pop())
            held.append(await waiter)
            count, total = waits(registry, "apg")
            with pytest.raises(psycopg_pool.PoolTimeout):
                await pool.getconn(timeout=0.05)
            assert sample(registry, "pool_timeouts_total", "apg") == 1
            after_count, after_total = waits(registry, "apg")
            assert after_count == count + 1
            assert after_total - total >= 0.05
            assert sample(registry, "pool_pending_requests", "apg") == 0
            for connection in held:
                await pool.putconn(connection)
            assert errors(registry, "apg") == 0

    asyncio.run(run())


def test_a_leak_warning_shows_the_application_line_that_checked_out(pg, caplog) -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=2, open=True) as pool:
        poolwatch.instrument(pool, name="where", registry=registry, leak_threshold=1, clock=clock)
        caplog.set_level("WARNING", logger="poolwatch.instrument")
        connection = pool.getconn()  # this line must head the leak warning's stack
        clock.advance(2)
        assert sample(registry, "pool_leaked_connections", "where") == 1
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        last = warning.rstrip().splitlines()[-2:]
        assert "in test_a_leak_warning_shows_the_application_line_that_checked_out" in last[0]
        assert "connection = pool.getconn()  # this line must head" in last[1]
        pool.putconn(connection)
        assert sample(registry, "pool_leaked_connections", "where") == 0
        assert errors(registry, "where") == 0


def test_a_leak_inside_the_pools_context_manager_shows_the_application_line(pg, caplog) -> None:
    # connection() enters through contextlib: its frame is passed over like psycopg_pool's own.
    registry = CollectorRegistry()
    clock = FakeClock()
    caplog.set_level("WARNING", logger="poolwatch.instrument")
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=2, open=True) as pool:
        poolwatch.instrument(pool, name="cm", registry=registry, leak_threshold=1, clock=clock)
        with pool.connection() as connection:  # the sync line the warning must end with
            connection.execute("SELECT 1")
            clock.advance(2)
            assert sample(registry, "pool_leaked_connections", "cm") == 1

    async def run() -> None:
        async with psycopg_pool.AsyncConnectionPool(pg.dsn(), min_size=1, max_size=2, open=False) as apool:
            poolwatch.instrument(apool, name="acm", registry=registry, leak_threshold=1, clock=clock)
            async with apool.connection() as connection:  # the async line the warning must end with
                await connection.execute("SELECT 1")
                clock.advance(2)
                assert sample(registry, "pool_leaked_connections", "acm") == 1

    asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    sites = (
        ("test_a_leak_inside_the_pools_context_manager_shows_the_application_line", "the sync line"),
        ("run", "the async line"),
    )
    for warning, (function, line) in zip(warnings, sites, strict=True):
        last = warning.rstrip().splitlines()[-2:]
        assert last[0].endswith(f", in {function}")
        assert f"connection:  # {line} the warning must end with" in last[1]
    assert errors(registry, "cm") == errors(registry, "acm") == 0


def test_connections_are_taken_and_given_back_by_keyword_as_without_poolwatch(pg) -> None:
    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=1, open=True) as pool:
        poolwatch.instrument(pool, name="kw", registry=registry)
        pool.putconn(conn=pool.getconn(timeout=5.0))
        assert sample(registry, "pool_checkouts_total", "kw") == 1
        assert sample(registry, "pool_use_seconds_count", "kw") == 1

    async def cycle() -> None:
        async with psycopg_pool.AsyncConnectionPool(pg.dsn(), min_size=1, max_size=1, open=False) as apool:
            poolwatch.instrument(apool, name="akw", registry=registry)
            await apool.putconn(conn=await apool.getconn(timeout=5.0))

    asyncio.run(cycle())
    assert sample(registry, "pool_checkouts_total", "akw") == 1
    assert sample(registry, "pool_use_seconds_count", "akw") == 1
    assert errors(registry, "kw") == errors(registry, "akw") == 0


@pytest.mark.parametrize("leak_threshold", [None, 60.0])
def test_async_methods_patched_on_the_class_later_are_called(pg, leak_threshold) -> None:
    calls: list[str] = []
    own_get, own_put = psycopg_pool.AsyncConnectionPool.getconn, psycopg_pool.AsyncConnectionPool.putconn

    async def getconn(self: Any, timeout: float | None = None) -> Any:
        calls.append("get")
        return await own_get(self, timeout)

    async def putconn(self: Any, conn: Any) -> None:
        calls.append("put")
        await own_put(self, conn)

    async def run() -> None:
        registry = CollectorRegistry()
        async with psycopg_pool.AsyncConnectionPool(pg.dsn(), min_size=1, max_size=1, open=False) as pool:
            await pool.wait()
            poolwatch.instrument(pool, name="later", registry=registry, leak_threshold=leak_threshold)
            async with pool.connection() as connection:
                await connection.execute("SELECT 1")
            assert calls == []
            with (
                mock.patch.object(psycopg_pool.AsyncConnectionPool, "getconn", getconn),
                mock.patch.object(psycopg_pool.AsyncConnectionPool, "putconn", putconn),
            ):
                async with pool.connection() as connection:
                    await connection.execute("SELECT 1")
            assert calls == ["get", "put"]
            await pool.putconn(await pool.getconn())
            stats = pool.get_stats()
            assert stats["requests_num"] == 3  # what the library's getconn counts, done by the hook
            assert sample(registry, "pool_checkouts_total", "later") == 3
            assert sample(registry, "pool_use_seconds_count", "later") == 3
            held = await pool.getconn()
            # The library's message, with the timeout the caller gave.
            with pytest.raises(psycopg_pool.PoolTimeout, match=r"after 0\.05 sec"):
                await pool.getconn(timeout=0.05)
            assert sample(registry, "pool_timeouts_total", "later") == 1
            await pool.putconn(held)
            with pytest.raises(ValueError, match="doesn't come from any pool"):
                await pool.putconn(await psycopg.AsyncConnection.connect(pg.dsn()))
            assert sample(registry, "pool_pending_requests", "later") == 0
            assert errors(registry, "later") == 0

    asyncio.run(run())


@pytest.mark.parametrize("leak_threshold", [None, 60.0])
def test_methods_patched_on_the_class_later_are_called(pg, leak_threshold) -> None:
    calls: list[str] = []
    own_get, own_put = psycopg_pool.ConnectionPool.getconn, psycopg_pool.ConnectionPool.putconn

    def getconn(self: Any, timeout: float | None = None) -> Any:
        calls.append("get")
        return own_get(self, timeout)

    def putconn(self: Any, conn: Any) -> None:
        calls.append("put")
        own_put(self, conn)

    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=1, open=True) as pool:
        pool.wait()
        poolwatch.instrument(pool, name="later", registry=registry, leak_threshold=leak_threshold)
        assert pool.getconn.__qualname__.startswith("_sync_checkout_hooks.")  # in the library's place
        with pool.connection() as connection:
            connection.execute("SELECT 1")
        assert calls == []
        with (
            mock.patch.object(psycopg_pool.ConnectionPool, "getconn", getconn),
            mock.patch.object(psycopg_pool.ConnectionPool, "putconn", putconn),
        ):
            with pool.connection() as connection:
                connection.execute("SELECT 1")
        assert calls == ["get", "put"]
        pool.putconn(pool.getconn())
        assert pool.get_stats()["requests_num"] == 3  # what the library's getconn counts, done by the hook
        assert sample(registry, "pool_checkouts_total", "later") == 3
        assert sample(registry, "pool_use_seconds_count", "later") == 3
        held = pool.getconn()
        # The library's message, with the timeout the caller gave.
        with pytest.raises(psycopg_pool.PoolTimeout, match=r"after 0\.05 sec"):
            pool.getconn(timeout=0.05)
        assert sample(registry, "pool_timeouts_total", "later") == 1
        pool.putconn(held)
        stranger = psycopg.Connection.connect(pg.dsn())
        with pytest.raises(ValueError, match="doesn't come from any pool"):
            pool.putconn(stranger)
        stranger.close()
        assert sample(registry, "pool_pending_requests", "later") == 0
        assert errors(registry, "later") == 0


OWN_CALLS: list[str] = []


class OwnMethodsPool(psycopg_pool.ConnectionPool):
    """An application's pool class with getconn / putconn of its own."""

    def getconn(self, timeout: float | None = None) -> Any:
        OWN_CALLS.append("get")
        return super().getconn(timeout)

    def putconn(self, conn: Any) -> None:
        OWN_CALLS.append("put")
        super().putconn(conn)


@pytest.mark.parametrize("leak_threshold", [None, 60.0])
@pytest.mark.parametrize("case", ["own methods", "another library version"])
def test_pools_the_hooks_cannot_stand_in_for_are_counted_through_their_methods(
    pg, case, leak_threshold
) -> None:
    # A class with methods of its own, or psycopg_pool bodies other than the hooks' copies: the
    # hooks call the class's methods (one frame more) and count the same.
    from poolwatch.instrument import psycopg_pool as adapter

    registry = CollectorRegistry()
    cls = OwnMethodsPool if case == "own methods" else psycopg_pool.ConnectionPool
    with (
        mock.patch.object(adapter, "_KNOWN_BODIES", case == "own methods"),
        cls(pg.dsn(), min_size=1, max_size=1, open=True) as pool,
    ):
        OWN_CALLS.clear()
        poolwatch.instrument(pool, name="own", registry=registry, leak_threshold=leak_threshold)
        assert pool.getconn.__qualname__.startswith("checkout_hooks.")  # the shared hooks
        with pool.connection() as connection:
            connection.execute("SELECT 1")
        pool.putconn(conn=pool.getconn(timeout=5.0))
        held = pool.getconn()
        with pytest.raises(psycopg_pool.PoolTimeout, match=r"after 0\.05 sec"):
            pool.getconn(timeout=0.05)
        pool.putconn(held)
        expected = ["get", "put", "get", "put", "get", "get", "put"] if case == "own methods" else []
        assert expected == OWN_CALLS
        assert pool.get_stats()["requests_num"] == 4
        assert sample(registry, "pool_checkouts_total", "own") == 3
        assert sample(registry, "pool_use_seconds_count", "own") == 3
        assert sample(registry, "pool_timeouts_total", "own") == 1
        assert errors(registry, "own") == 0


def test_a_connection_dropped_by_a_task_is_not_kept_alive_and_is_reported_as_leaked(pg) -> None:
    async def run() -> None:
        registry = CollectorRegistry()
        async with psycopg_pool.AsyncConnectionPool(pg.dsn(), min_size=1, max_size=2, open=False) as pool:
            await pool.wait()
            poolwatch.instrument(pool, name="agc", registry=registry, leak_threshold=0.001)

            async def drop() -> weakref.ref[object]:
                connection = await pool.getconn()
                await connection.execute("SELECT 1")
                return weakref.ref(connection)

            dropped = await drop()
            gc.collect()
            assert dropped() is None  # poolwatch holds no reference to it
            await asyncio.sleep(0.01)
            assert sample(registry, "pool_leaked_connections", "agc") == 1
            assert errors(registry, "agc") == 0

    asyncio.run(run())


def _failing_reset(connection: psycopg.Connection[Any]) -> None:
    connection.execute("SELECT no_such_column")  # psycopg_pool closes a connection it cannot reset


def test_closes_are_counted_by_the_reason_the_pool_closed(pg) -> None:
    registry = CollectorRegistry()

    def closed(reason: str) -> float:
        return sample(registry, "pool_closed_total", "pc", reason=reason)

    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=3, max_idle=0.2, open=True) as pool:
        pool.wait()
        poolwatch.instrument(pool, name="pc", registry=registry)
        held = [pool.getconn() for _ in range(3)]
        for connection in held:
            pool.putconn(connection)
        # Above min_size, idle past max_idle: closed one at a time by the pool's shrink task.
        wait_for(lambda: closed("idle_timeout") == 2, what="two idle connections closed")
        assert pool.get_stats()["pool_size"] == 1
        pool.drain()  # the idle one closed, a new one opened
        assert closed("recycled") == 1
        wait_for(lambda: pool.get_stats().get("pool_available", 0) == 1, what="the pool refilled")
    # Leaving the with block closed the pool and its idle connection.
    assert closed("dispose") == 1
    assert (closed("error"), closed("max_lifetime")) == (0, 0)
    assert errors(registry, "pc") == 0

    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=1, max_lifetime=0.5, open=True) as pool:
        pool.wait()
        poolwatch.instrument(pool, name="pc", registry=registry)

        def cycled() -> bool:
            with pool.connection(timeout=10) as connection:
                connection.execute("SELECT 1")
            return closed("max_lifetime") >= 1

        wait_for(cycled, what="a connection past max_lifetime closed on its return")
        assert (closed("error"), closed("idle_timeout")) == (0, 0)

    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(
        pg.dsn(), min_size=1, max_size=1, reset=_failing_reset, open=True
    ) as pool:
        pool.wait()
        poolwatch.instrument(pool, name="pc", registry=registry)
        with pool.connection() as connection:
            connection.execute("SELECT 1")
        wait_for(lambda: closed("error") == 1, what="the connection it could not reset closed")
        assert errors(registry, "pc") == 0

    registry = CollectorRegistry()
    with psycopg_pool.ConnectionPool(
        pg.dsn(), min_size=1, max_size=1, reset=lambda connection: None, open=True
    ) as pool:
        pool.wait()
        poolwatch.instrument(pool, name="pc", registry=registry)
        connection = pool.getconn()
        connection.pgconn.send_query(b"SELECT 1")  # returned mid-operation: closed, then reset
        pool.putconn(connection)
        wait_for(lambda: connection.closed, what="the connection closed")
        with pool.connection(timeout=10):  # once its replacement is there
            pool.drain()  # out while the pool drains: closed on its return (by a worker)
        wait_for(lambda: closed("recycled") == 1, what="the drained connection closed on its return")
        assert closed("error") == 1  # closed twice by the pool, counted once
        assert errors(registry, "pc") == 0


def test_a_null_pools_closes_on_return_are_overflow(pg) -> None:
    registry = CollectorRegistry()
    with psycopg_pool.NullConnectionPool(pg.dsn(), max_size=2, open=True) as pool:
        poolwatch.instrument(pool, name="null", registry=registry)
        for _ in range(3):
            with pool.connection() as connection:
                connection.execute("SELECT 1")
        assert sample(registry, "pool_closed_total", "null", reason="overflow") == 3
    assert sample(registry, "pool_closed_total", "null", reason="dispose") == 0
    assert sample(registry, "pool_checkouts_total", "null") == 3
    assert errors(registry, "null") == 0


def test_an_async_pools_closes_are_counted_by_reason(pg) -> None:
    registry = CollectorRegistry()

    def closed(reason: str) -> float:
        return sample(registry, "pool_closed_total", "apc", reason=reason)

    async def body() -> None:
        async with psycopg_pool.AsyncConnectionPool(pg.dsn(), min_size=2, max_size=2, open=False) as pool:
            await pool.wait()
            poolwatch.instrument(pool, name="apc", registry=registry)
            await pool.drain()
            assert closed("recycled") == 2
            await pool.wait()
        assert closed("dispose") == 2

    asyncio.run(asyncio.wait_for(body(), timeout=60))
    assert errors(registry, "apc") == 0
