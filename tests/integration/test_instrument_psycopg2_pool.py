"""poolwatch.instrument on psycopg2.pool pools against a real PostgreSQL: exact counts under threads,
exhaustion (PoolError), a server restart, and nothing visible to the application."""

from __future__ import annotations

import threading

import psycopg2
import psycopg2.pool
import pytest
from prometheus_client import CollectorRegistry

import poolwatch
from tests.daemonkit import wait_for
from tests.integration.test_instrument_psycopg_pool import errors
from tests.poolmetrics import FakeClock, sample, waits
from tests.threads import acquiring

pytestmark = pytest.mark.integration

POOL_CLASSES = [psycopg2.pool.SimpleConnectionPool, psycopg2.pool.ThreadedConnectionPool]


def test_threads_are_counted_exactly(pg) -> None:
    registry = CollectorRegistry()
    pool = psycopg2.pool.ThreadedConnectionPool(1, 8, pg.dsn())
    poolwatch.instrument(pool, name="p2", registry=registry)

    def work() -> None:
        for _ in range(25):
            connection = pool.getconn()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            pool.putconn(connection)

    done = threading.Event()

    def scrape() -> None:  # closes are worked out while connections come and go
        while not done.is_set():
            sample(registry, "pool_closed_total", "p2", reason="overflow")

    scraper = threading.Thread(target=scrape)
    scraper.start()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    scraper.join()
    assert sample(registry, "pool_checkouts_total", "p2") == 200
    assert sample(registry, "pool_wait_seconds_count", "p2") == 200
    assert sample(registry, "pool_use_seconds_count", "p2") == 200
    assert sample(registry, "pool_pending_requests", "p2") == 0
    assert sample(registry, "pool_max_connections", "p2") == 8
    assert sample(registry, "pool_min_idle", "p2") == 1
    assert sample(registry, "pool_connections", "p2", state="used") == 0
    assert sample(registry, "pool_connections", "p2", state="idle") == 1  # psycopg2 keeps minconn
    assert sample(registry, "pool_create_seconds_count", "p2") >= 1
    # Every connection opened under the threads but the one kept idle was closed as it came back.
    opened = sample(registry, "pool_create_seconds_count", "p2")
    assert sample(registry, "pool_closed_total", "p2", reason="overflow") == opened
    assert errors(registry, "p2") == 0
    pool.closeall()


def test_threads_contending_for_the_pool_are_counted_exactly(pg) -> None:
    """Eight threads, three connections: in each round every thread asks for one before any gives
    one back, so three get one and five get psycopg2's PoolError (counted as timeouts)."""
    registry = CollectorRegistry()
    pool = psycopg2.pool.ThreadedConnectionPool(0, 3, pg.dsn())
    poolwatch.instrument(pool, name="busy", registry=registry)
    rounds, threads_count = 20, 8
    asked = threading.Barrier(threads_count)
    refused: list[int] = []

    def work() -> None:
        for _ in range(rounds):
            try:
                connection = pool.getconn()
            except psycopg2.pool.PoolError:
                connection = None
                refused.append(1)
            asked.wait(30)  # every thread has asked in this round
            if connection is not None:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                pool.putconn(connection)
            asked.wait(30)  # every connection is back before the next round

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == rounds * 5
    assert sample(registry, "pool_checkouts_total", "busy") == rounds * 3
    assert sample(registry, "pool_timeouts_total", "busy") == rounds * 5
    assert sample(registry, "pool_wait_seconds_count", "busy") == rounds * threads_count
    assert sample(registry, "pool_use_seconds_count", "busy") == rounds * 3
    assert sample(registry, "pool_pending_requests", "busy") == 0
    assert sample(registry, "pool_connections", "busy", state="used") == 0
    assert errors(registry, "busy") == 0
    pool.closeall()


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_closes_are_counted_by_reason(pg, pool_class) -> None:
    """psycopg2 keeps ``minconn`` connections idle and closes the others as they come back (worked
    out as overflow); ``putconn(close=True)`` is the caller's close (invalidated), ``closeall()``
    the pool's end (dispose)."""
    registry = CollectorRegistry()
    pool = pool_class(1, 4, pg.dsn())  # one connection opened before instrument()

    def closed(reason: str) -> float:
        return sample(registry, "pool_closed_total", "closes", reason=reason)

    old = poolwatch.instrument(pool, name="closes", registry=registry)
    held = [pool.getconn() for _ in range(4)]  # three opened since
    for connection in held[:3]:
        pool.putconn(connection)  # the first stays idle (minconn 1), two are closed
    assert [connection.closed for connection in held[:3]] == [0, 1, 1]
    assert closed("overflow") == 2
    pool.putconn(held[3], close=True)
    assert held[3].closed
    assert (closed("overflow"), closed("invalidated")) == (2, 1)
    again = pool.getconn()  # the idle one: nothing opened or closed
    pool.putconn(again)
    assert (closed("overflow"), closed("invalidated"), closed("dispose")) == (2, 1, 0)
    pool.closeall()
    assert (closed("overflow"), closed("invalidated"), closed("dispose")) == (2, 1, 1)
    assert sample(registry, "pool_create_seconds_count", "closes") == 3
    assert errors(registry, "closes") == 0

    # A pool replacing this one under the same name counts on from its closes.
    replacement = pool_class(1, 4, pg.dsn())
    registry = CollectorRegistry()
    poolwatch.instrument(replacement, name="closes", registry=registry, counts_from=old.recorder)
    held = [replacement.getconn() for _ in range(3)]
    for connection in held:
        replacement.putconn(connection)
    assert (closed("overflow"), closed("invalidated"), closed("dispose")) == (4, 1, 1)
    replacement.closeall()
    assert (closed("overflow"), closed("invalidated"), closed("dispose")) == (4, 1, 2)


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_exhaustion_is_counted_as_a_timeout(pg, pool_class) -> None:
    registry = CollectorRegistry()
    pool = pool_class(1, 2, pg.dsn())
    poolwatch.instrument(pool, name="ex", registry=registry)
    held = [pool.getconn(), pool.getconn()]
    assert sample(registry, "pool_connections", "ex", state="used") == 2
    count, total = waits(registry, "ex")
    with pytest.raises(psycopg2.pool.PoolError, match="exhausted"):
        pool.getconn()
    assert sample(registry, "pool_timeouts_total", "ex") == 1
    after_count, after_total = waits(registry, "ex")
    assert after_count == count + 1  # refused at once: a wait of about 0
    assert after_total >= total
    assert sample(registry, "pool_pending_requests", "ex") == 0
    assert sample(registry, "pool_checkouts_total", "ex") == 2
    for connection in held:
        pool.putconn(connection)
    assert errors(registry, "ex") == 0
    pool.closeall()


def test_a_caller_blocked_on_the_pool_is_pending(pg) -> None:
    registry = CollectorRegistry()
    pool = psycopg2.pool.ThreadedConnectionPool(1, 2, pg.dsn())
    poolwatch.instrument(pool, name="pend", registry=registry)
    got: list[object] = []
    with pool._lock:  # another thread inside the pool
        caller = threading.Thread(target=lambda: got.append(pool.getconn()))
        caller.start()
        wait_for(lambda: acquiring(caller, "getconn"), what="the caller blocked on the pool's lock")
        assert sample(registry, "pool_pending_requests", "pend") == 1
    caller.join()
    assert sample(registry, "pool_pending_requests", "pend") == 0
    pool.putconn(got[0])
    pool.closeall()


@pytest.mark.destructive
def test_a_server_restart_counts_refused_connects_and_recovers(pg_factory) -> None:
    server = pg_factory()
    registry = CollectorRegistry()
    pool = psycopg2.pool.ThreadedConnectionPool(1, 2, server.dsn())
    poolwatch.instrument(pool, name="rs", registry=registry)
    server.stop()
    stale = pool.getconn()  # the idle connection, dead now
    with pytest.raises(psycopg2.OperationalError):
        pool.getconn()  # a new one is refused
    assert sample(registry, "pool_connect_errors_total", "rs", reason="refused") == 1
    pool.putconn(stale, close=True)
    server.start()
    connection = pool.getconn()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    pool.putconn(connection)
    assert sample(registry, "pool_checkouts_total", "rs") == 2
    assert sample(registry, "pool_pending_requests", "rs") == 0
    assert errors(registry, "rs") == 0
    pool.closeall()


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_the_pool_stays_the_applications_and_leaks_are_reported(pg, pool_class) -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    pool = pool_class(1, 2, pg.dsn())
    before = set(vars(pool))
    poolwatch.instrument(pool, name="inv", registry=registry, leak_threshold=30, clock=clock)
    assert type(pool) is pool_class
    assert set(vars(pool)) - before <= set(dir(pool_class))
    with pytest.raises(ValueError, match="already instrumented"):
        poolwatch.instrument(pool, name="again", registry=registry)
    connection = pool.getconn()
    clock.advance(31)
    assert sample(registry, "pool_leaked_connections", "inv") == 1
    assert sample(registry, "pool_leaks_total", "inv") == 1
    pool.putconn(connection)
    assert sample(registry, "pool_leaked_connections", "inv") == 0
    assert errors(registry, "inv") == 0
    pool.closeall()


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_a_leak_warning_shows_the_application_line_that_checked_out(pg, pool_class, caplog) -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    pool = pool_class(1, 2, pg.dsn())
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
    assert errors(registry, "where") == 0
    pool.closeall()
