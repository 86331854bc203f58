"""Servers that stop, restart or drop poolwatch's sessions: the daemon notices, recovers on its own
within one probe interval, never hands a dead pooled connection to a caller, and keeps serving
/metrics throughout."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import event, text
from sqlalchemy.pool import QueuePool

from poolwatch.errors import DatabaseUnavailableError
from tests.daemonkit import Scraper, metric, running_daemon, scrape, value, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Engine

    from poolwatch.daemon import Daemon
    from poolwatch.database import Database
    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

INTERVAL = 0.5
# The probe runs every INTERVAL; recovery is asserted within one interval plus this much for the
# scheduler's tick, the connect and a loaded, shared 2-core machine.
SLACK = 1.5


def _pg_target(name: str, url: str, size: int = 3) -> dict[str, object]:
    return {
        "name": name,
        "kind": "postgres",
        "url": url,
        "pool": {"size": size, "max_overflow": 0, "timeout": 5},
        "probe": {"interval": INTERVAL, "timeout": INTERVAL},
    }


def _fill_pool(database: Database, size: int) -> None:
    """Open ``size`` connections at once and return them to the pool, all idle and alive."""
    barrier = threading.Barrier(size)
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with database.session_scope() as session:
                session.execute(text("SELECT 1"))
                barrier.wait(10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not errors, errors
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedin() == size


def _count_discards(engine: Engine) -> Callable[[], int]:
    """Connections the pool threw away (invalidated on a failed pre-ping, or closed as stale)."""
    counts = {"invalidate": 0, "close": 0}

    def on_invalidate(*_: object) -> None:
        counts["invalidate"] += 1

    def on_close(*_: object) -> None:
        counts["close"] += 1

    event.listen(engine, "invalidate", on_invalidate)
    event.listen(engine, "close", on_close)
    return lambda: counts["invalidate"] + counts["close"]


def _closed(daemon: Daemon, pool: str) -> dict[str, float]:
    """poolwatch_pool_closed_total of one pool, by reason (the instrumentation's count)."""
    samples = scrape(daemon)
    return {
        dict(labels)["reason"]: count
        for (name, labels), count in samples.items()
        if name == "poolwatch_pool_closed_total" and dict(labels).get("pool") == pool
    }


def _discarded_by_pool(before: dict[str, float], after: dict[str, float]) -> float:
    """Connections closed as dead between two readings: failed pre-ping, invalidated, error."""
    reasons = ("pre_ping_failed", "invalidated", "error")
    return sum(after.get(r, 0) - before.get(r, 0) for r in reasons)


def _up(daemon: Daemon, target: str) -> Callable[[], bool]:
    return lambda: metric(daemon, "poolwatch_up", target=target) == 1


def _down(daemon: Daemon, target: str) -> Callable[[], bool]:
    return lambda: metric(daemon, "poolwatch_up", target=target) == 0


@pytest.mark.destructive
def test_postgres_stopped_and_restarted_recovers_within_one_interval(
    pg_factory: Callable[[], PostgresServer],
) -> None:
    server = pg_factory()
    with running_daemon({"targets": [_pg_target("pg", server.url())]}) as daemon:
        with Scraper(f"{daemon.base_url}/metrics") as scraper:
            wait_for(_up(daemon, "pg"), 10, "pg up at start")
            database = daemon.runtime("pg").database
            assert database is not None
            _fill_pool(database, 3)
            discarded = _count_discards(database.engine)
            closed_before = _closed(daemon, "pg")

            server.stop()
            wait_for(_down(daemon, "pg"), INTERVAL + SLACK, "up 0 after the server stopped")
            samples = scrape(daemon)
            down_failures = sum(
                value(samples, "poolwatch_probe_failures_total", target="pg", reason=reason)
                for reason in ("refused", "reset", "other")
            )
            assert down_failures >= 1
            with pytest.raises(DatabaseUnavailableError, match="pg: "), database.session_scope() as session:
                session.execute(text("SELECT 1"))

            server.start()
            took = wait_for(_up(daemon, "pg"), INTERVAL + SLACK, "up 1 after the server returned")
            # Every caller after the return gets a working connection: the ones pooled before the
            # stop are discarded (pre-ping, or the pool's invalidation time), never handed out.
            for _ in range(10):
                with database.session_scope() as session:
                    assert session.execute(text("SELECT 1")).scalar() == 1
            assert discarded() >= 1
            # ... and the instrumentation counted why they were closed.
            assert _discarded_by_pool(closed_before, _closed(daemon, "pg")) >= 1
        scraper.assert_served()
    assert took <= INTERVAL + SLACK


def test_every_backend_terminated_is_replaced_without_errors(pg: PostgresServer) -> None:
    name = "terminated"
    config = {"targets": [_pg_target(name, pg.url(), size=4)]}
    with running_daemon(config) as daemon, Scraper(f"{daemon.base_url}/metrics") as scraper:
        wait_for(_up(daemon, name), 10, "up at start")
        database = daemon.runtime(name).database
        assert database is not None
        _fill_pool(database, 4)
        discarded = _count_discards(database.engine)
        closed_before = _closed(daemon, name)
        application = f"poolwatch-{name}"
        assert len(pg.backends(application)) == 4

        assert pg.terminate(application) == 4
        wait_for(lambda: not pg.backends(application), 5, "backends gone")
        # The four pooled connections are dead; pre-ping finds that out at checkout.
        for _ in range(8):
            with database.session_scope() as session:
                assert session.execute(text("SELECT 1")).scalar() == 1
        assert discarded() >= 1
        closed = _closed(daemon, name)
        assert closed.get("pre_ping_failed", 0) - closed_before.get("pre_ping_failed", 0) >= 1, closed
        wait_for(_up(daemon, name), INTERVAL + SLACK, "up after the backends were terminated")
        wait_for(lambda: len(pg.backends(application)) >= 1, 5, "new backends")
    scraper.assert_served()


@pytest.mark.destructive
def test_redis_stopped_and_restarted_recovers_within_one_interval(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    target = {
        "name": "cache",
        "kind": "redis",
        "url": server.url(),
        "probe": {"interval": INTERVAL, "timeout": INTERVAL},
    }
    with running_daemon({"targets": [target]}) as daemon:
        with Scraper(f"{daemon.base_url}/metrics") as scraper:
            wait_for(_up(daemon, "cache"), 10, "redis up at start")
            redis_db = daemon.runtime("cache").redis
            assert redis_db is not None
            with redis_db.client_scope() as client:
                client.set("k", "v")

            server.stop()
            wait_for(_down(daemon, "cache"), INTERVAL + SLACK, "up 0 after redis stopped")
            samples = scrape(daemon)
            failures = sum(
                value(samples, "poolwatch_probe_failures_total", target="cache", reason=reason)
                for reason in ("refused", "reset", "other")
            )
            assert failures >= 1

            server.start()
            took = wait_for(_up(daemon, "cache"), INTERVAL + SLACK, "up 1 after redis returned")
            for _ in range(5):
                with redis_db.client_scope() as client:
                    assert client.ping() is True
        scraper.assert_served()
    assert took <= INTERVAL + SLACK
