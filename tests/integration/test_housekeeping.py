"""Housekeeping on real PostgreSQL: keepalive, idle eviction to min_idle, max lifetime, refill."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch.housekeeping import BackgroundHousekeeper, Housekeeper, HousekeepingPolicy, start_housekeeping
from poolwatch.instrument.recorder import MAX_JITTER
from poolwatch.instrument.sqlalchemy import pool_internals
from tests.poolmetrics import FakeClock, churning, sample

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration


class Pool:
    """An instrumented engine with its own application_name, a fake clock, and its registry."""

    def __init__(self, pg: PostgresServer, **options: object) -> None:
        self.pg = pg
        self.app = f"pw-hk-{uuid.uuid4().hex[:8]}"
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        args = {"application_name": self.app, "connect_timeout": 5}
        self.engine: Engine = create_engine(pg.url(), connect_args=args, **options)
        self.instrumentation = poolwatch.instrument(
            self.engine, name="hk", registry=self.registry, clock=self.clock
        )

    def fill(self, count: int) -> None:
        """Open ``count`` connections at once and return them all to the pool."""
        held = [self.engine.connect() for _ in range(count)]
        for connection in held:
            connection.close()

    def server_sessions(self) -> int:
        return len(self.pg.backends(self.app))

    def closed(self, reason: str) -> float:
        return sample(self.registry, "pool_closed_total", "hk", reason=reason)

    def idle(self) -> float:
        return sample(self.registry, "pool_connections", "hk", state="idle")


@pytest.fixture
def pools(pg: PostgresServer) -> Iterator[list[Pool]]:
    made: list[Pool] = []
    yield made
    for pool in made:
        pool.engine.dispose()


def make(pg: PostgresServer, pools: list[Pool], **options: object) -> Pool:
    pool = Pool(pg, **options)
    pools.append(pool)
    return pool


def test_idle_eviction_closes_down_to_min_idle(pg, pools) -> None:
    pool = make(pg, pools, pool_size=4)
    pool.fill(4)
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(min_idle=1, idle_timeout=60))
    pool.clock.advance(59)
    assert keeper.run_once().closed == {}
    pool.clock.advance(2)
    report = keeper.run_once()
    assert report.closed == {"idle_timeout": 3}
    assert pool.closed("idle_timeout") == 3
    assert pool.idle() == 1
    assert sample(pool.registry, "pool_min_idle", "hk") == 1
    assert pool.server_sessions() == 1
    # The pool still works and can grow again: the closed connections gave back their slots.
    pool.fill(4)
    assert pool.server_sessions() == 4


def test_keepalive_drops_a_connection_whose_backend_died_and_refills(pg, pools) -> None:
    pool = make(pg, pools, pool_size=2, pool_pre_ping=False)
    pool.fill(2)
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(min_idle=2, keepalive=30))
    pool.clock.advance(31)
    assert pg.terminate(pool.app) == 2
    report = keeper.run_once()
    assert report.closed == {"pre_ping_failed": 2}
    assert report.opened == 2
    assert pool.closed("pre_ping_failed") == 2
    assert pool.server_sessions() == 2
    with pool.engine.connect() as connection:  # no pre-ping: only keepalive saved this checkout
        assert connection.execute(text("SELECT 1")).scalar() == 1


def test_keepalive_pings_live_connections_and_leaves_them_idle_not_in_transaction(pg, pools) -> None:
    pool = make(pg, pools, pool_size=2)
    pool.fill(2)
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(keepalive=30))
    pool.clock.advance(31)
    assert keeper.run_once().pinged == 2
    assert keeper.run_once().pinged == 0  # pinged now: unused for 0 s
    states = {state for _pid, _app, state in pg.backends(pool.app)}
    assert states == {"idle"}
    assert pool.idle() == 2
    assert sum(pool.closed(r) for r in ("pre_ping_failed", "idle_timeout", "error")) == 0


def test_max_lifetime_retires_old_connections_with_jitter(pg, pools) -> None:
    pool = make(pg, pools, pool_size=4)
    pool.fill(4)
    assert isinstance(pool.engine.pool, QueuePool)
    internals = pool_internals(pool.engine.pool)
    assert internals.idle_records is not None
    jitters = [pool.instrumentation.jitter(record) for record in internals.idle_records]
    assert all(0 <= j <= MAX_JITTER for j in jitters)
    assert len(set(jitters)) == 4  # drawn per connection
    start = time.time()
    wall = FakeClock(start)
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(min_idle=2, max_lifetime=1000), wall=wall)
    wall.advance(1000 * (1 - MAX_JITTER) - 1)  # younger than any connection's jittered lifetime
    assert keeper.run_once().closed == {}
    wall.advance(1000 * MAX_JITTER + 2)  # older than all of them
    report = keeper.run_once()
    assert report.closed == {"max_lifetime": 4}
    assert report.opened == 2  # refilled to min_idle with fresh connections
    assert pool.closed("max_lifetime") == 4
    assert pool.server_sessions() == 2


def test_housekeeping_never_takes_a_connection_a_caller_waits_for(pg, pools) -> None:
    pool = make(pg, pools, pool_size=1, max_overflow=0, pool_timeout=10)
    pool.fill(1)
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(idle_timeout=1, keepalive=1))
    pool.clock.advance(5)
    # Simulate a caller inside a checkout: it is counted as pending until it is answered.
    pool.instrumentation.recorder.requested.hit()
    assert keeper.run_once().closed == {}
    assert pool.idle() == 1
    pool.instrumentation.recorder.handed.hit()
    assert keeper.run_once().closed == {"idle_timeout": 1}


def test_checkouts_keep_working_while_housekeeping_runs(pg, pools) -> None:
    pool = make(pg, pools, pool_size=3, max_overflow=2, pool_timeout=30)
    keeper = Housekeeper(
        pool.instrumentation, HousekeepingPolicy(min_idle=1, idle_timeout=0.001, keepalive=0.001)
    )
    with churning(keeper, pool.clock) as failures:
        for _ in range(300):
            with pool.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
    assert failures == []
    assert sample(pool.registry, "pool_checkouts_total", "hk") == 300
    assert sample(pool.registry, "pool_connections", "hk", state="used") == 0
    assert sample(pool.registry, "instrumentation_errors_total", "hk") == 0


def test_background_helper_runs_and_stops_twice_safely(pg, pools) -> None:
    pool = make(pg, pools, pool_size=3)
    helper = start_housekeeping(
        pool.instrumentation, interval=0.05, min_idle=2, idle_timeout=None, max_lifetime=None, keepalive=None
    )
    try:
        deadline = time.monotonic() + 10
        while pool.server_sessions() < 2:
            assert time.monotonic() < deadline, "the helper did not refill to min_idle"
            time.sleep(0.05)
    finally:
        helper.stop()
        helper.stop()
    assert isinstance(helper, BackgroundHousekeeper)
    assert pool.idle() == 2
