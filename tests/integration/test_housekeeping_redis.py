"""Housekeeping of redis-py pools on a real Redis: max lifetime with jitter, alongside idle eviction."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

import poolwatch
from poolwatch.housekeeping import Housekeeper, HousekeepingPolicy
from poolwatch.instrument.recorder import MAX_JITTER
from poolwatch.instrument.redis import pool_internals
from tests.poolmetrics import FakeClock, churning, sample

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.servers import RedisServer

pytestmark = pytest.mark.integration

POOL_CLASSES = [redis.ConnectionPool, redis.BlockingConnectionPool]


class Pool:
    """An instrumented redis-py pool with its own client name, a fake clock, and its registry."""

    def __init__(self, server: RedisServer, pool_class: type[redis.ConnectionPool], **options: Any) -> None:
        self.server = server
        self.name = f"pw-hk-{uuid.uuid4().hex[:8]}"
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.pool = pool_class(
            host=server.host, port=server.port, password=server.password, client_name=self.name, **options
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self.instrumentation = poolwatch.instrument_redis(
            self.pool, name="hk", registry=self.registry, clock=self.clock
        )
        self.internals = pool_internals(self.pool)

    def fill(self, count: int) -> list[Any]:
        """Open ``count`` connections at once and return them all to the pool."""
        held = [self.pool.get_connection() for _ in range(count)]
        for connection in held:
            self.pool.release(connection)
        return held

    def server_sessions(self) -> int:
        admin = self.server.client()
        try:
            return sum(1 for c in admin.client_list() if c.get("name") == self.name)
        finally:
            admin.close()

    def sample(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, "hk", **labels)


@pytest.fixture
def pools(redis_server: RedisServer) -> Iterator[list[Pool]]:
    made: list[Pool] = []
    yield made
    for pool in made:
        pool.pool.disconnect()


@pytest.fixture(params=POOL_CLASSES, ids=lambda c: c.__name__)
def make(request: pytest.FixtureRequest, redis_server: RedisServer, pools: list[Pool]) -> Any:
    def build(**options: Any) -> Pool:
        pool = Pool(redis_server, request.param, **options)
        pools.append(pool)
        return pool

    return build


def test_max_lifetime_retires_old_idle_connections_with_jitter(make) -> None:
    pool = make(max_connections=10)
    connections = pool.fill(4)
    stamps = {c: pool.instrumentation.opened(c) for c in connections}
    assert all(s is not None and s[0] == pool.clock.now for s in stamps.values())
    jitters = {c: s[1] for c, s in stamps.items() if s is not None}
    assert all(0 <= j <= MAX_JITTER for j in jitters.values())
    assert len(set(jitters.values())) == 4  # drawn per connection
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(min_idle=2, max_lifetime=1000))
    pool.clock.advance(1000 * (1 - MAX_JITTER) - 1)  # younger than any connection's jittered lifetime
    assert keeper.run_once().closed == {}
    # Between the smallest and the largest jitter: exactly the connections with the larger ones expire.
    middle = (min(jitters.values()) + max(jitters.values())) / 2
    pool.clock.now = 1000.0 + 1000 * (1 - middle)
    expected = {c for c, j in jitters.items() if j > middle}
    report = keeper.run_once()
    assert report.closed == {"max_lifetime": len(expected)}
    assert {c for c in connections if not pool.internals.connected(c)} == expected
    assert pool.server_sessions() == 4 - len(expected)
    pool.clock.now = 1000.0 + 1000 + 1  # older than all of them; min_idle does not keep old ones
    assert keeper.run_once().closed == {"max_lifetime": 4 - len(expected)}
    assert pool.sample("pool_closed_total", reason="max_lifetime") == 4
    assert pool.server_sessions() == 0
    assert pool.sample("pool_connections", state="idle") == 4  # still in the pool, reconnected on use


def test_a_retired_connection_reconnects_on_use_and_ages_from_then(make) -> None:
    pool = make()
    pool.fill(1)
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(max_lifetime=100))
    pool.clock.advance(101)
    assert keeper.run_once().closed == {"max_lifetime": 1}
    assert pool.client.ping()
    assert pool.sample("pool_create_seconds_count") == 2
    assert pool.server_sessions() == 1
    assert keeper.run_once().closed == {}  # its lifetime restarted when it reconnected
    pool.clock.advance(50)
    assert keeper.run_once().closed == {}
    pool.clock.advance(51)
    assert keeper.run_once().closed == {"max_lifetime": 1}
    assert pool.sample("pool_closed_total", reason="max_lifetime") == 2


def test_max_lifetime_never_touches_a_connection_in_use(make) -> None:
    pool = make(max_connections=5)
    pool.fill(2)
    held = pool.pool.get_connection()
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(max_lifetime=100, idle_timeout=10))
    pool.clock.advance(1000)
    assert keeper.run_once().closed == {"max_lifetime": 1}  # the idle one only
    held.send_command("PING")
    assert held.read_response() == b"PONG"
    pool.pool.release(held)
    assert keeper.run_once().closed == {"max_lifetime": 1}  # idle now, and old
    assert pool.sample("pool_closed_total", reason="idle_timeout") == 0  # counted once, not twice
    assert pool.sample("pool_use_seconds_count") == 3


def test_max_lifetime_skips_connections_redis_py_already_closed(make) -> None:
    pool = make()
    pool.fill(2)
    pool.pool.disconnect()
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(max_lifetime=100))
    pool.clock.advance(1000)
    assert keeper.run_once().closed == {}
    assert pool.sample("pool_closed_total", reason="max_lifetime") == 0


def test_connections_opened_before_instrumenting_age_from_then(redis_server) -> None:
    name = f"pw-hk-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(
        host=redis_server.host, port=redis_server.port, password=redis_server.password, client_name=name
    )
    client.ping()
    clock, registry = FakeClock(), CollectorRegistry()
    instrumentation = poolwatch.instrument_redis(client, name="early", registry=registry, clock=clock)
    keeper = Housekeeper(instrumentation, HousekeepingPolicy(max_lifetime=100))
    assert keeper.run_once().closed == {}
    clock.advance(101)
    assert keeper.run_once().closed == {"max_lifetime": 1}
    assert client.ping()
    assert sample(registry, "pool_create_seconds_count", "early") == 1  # its reconnect is timed
    client.close()


def test_commands_keep_working_while_max_lifetime_and_idle_eviction_run(make) -> None:
    """Without redis-py's retries a connection disconnected while in use would fail its command."""
    pool = make(max_connections=3, retry=Retry(NoBackoff(), 0))
    keeper = Housekeeper(pool.instrumentation, HousekeepingPolicy(idle_timeout=0.5, max_lifetime=1))
    with churning(keeper, pool.clock) as failures:
        for _ in range(300):
            assert pool.client.ping()  # raises if housekeeping disconnected it meanwhile
    assert failures == []
    assert pool.sample("pool_checkouts_total") == 300
    assert pool.sample("pool_connections", state="used") == 0
    assert pool.sample("instrumentation_errors_total") == 0
