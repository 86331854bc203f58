"""Readiness helpers against real PostgreSQL and Redis servers: ping latency, an unreachable and a
hung server, a saturated pool reported without queueing behind the application."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis

from poolwatch import CallTimeoutError, Database, DatabaseUnavailableError, RedisDatabase
from tests.servers import free_port
from tests.tcpproxy import TcpProxy

if TYPE_CHECKING:
    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


def test_ping_and_health_of_a_reachable_database(pg: PostgresServer) -> None:
    db = Database.from_url(pg.url(), pool_size=2, max_overflow=1)
    try:
        assert db.ping() > 0
        health = db.health()
        assert health.ok
        assert health.reachable is True
        assert health.latency_seconds is not None
        assert health.latency_seconds > 0
        assert (health.in_use, health.max_connections, health.saturated) == (0, 3, False)
    finally:
        db.dispose()


def test_a_saturated_pool_is_reported_without_a_ping(pg: PostgresServer) -> None:
    # pool_timeout 60: a ping that queued for a connection would be waited for (timeout=30) and then
    # reported as unreachable. None says it was never sent.
    db = Database.from_url(pg.url(), pool_size=1, max_overflow=0, pool_timeout=60)
    try:
        with db.engine.connect():
            health = db.health(timeout=30)
        assert not health.ok
        assert health.saturated
        assert health.reachable is None
        assert (health.in_use, health.max_connections) == (1, 1)
        assert db.health().ok, "ready again once the connection is back"
    finally:
        db.dispose()


def test_saturation_can_be_reported_below_the_limit(pg: PostgresServer) -> None:
    db = Database.from_url(pg.url(), pool_size=2, max_overflow=2)
    try:
        with db.engine.connect(), db.engine.connect(), db.engine.connect():
            assert not db.health(saturation=0.75).ok
            assert db.health(saturation=1.0).ok
    finally:
        db.dispose()


def test_an_unreachable_database_is_reported_and_ping_raises() -> None:
    db = Database.from_url(f"postgresql+psycopg2://u@127.0.0.1:{free_port()}/x")
    try:
        health = db.health()
        assert health.reachable is False
        assert not health.ok
        assert "refused" in health.error.lower()
        with pytest.raises(DatabaseUnavailableError):
            db.ping()
    finally:
        db.dispose()


def test_a_hung_database_answers_within_the_timeout() -> None:
    with TcpProxy(mode="blackhole") as proxy:
        db = Database.from_url(
            f"postgresql+psycopg2://u@{proxy.address}/x", connect_args={"connect_timeout": 60}
        )
        try:
            health = db.health(timeout=0.5)
            assert health.reachable is False
            assert "no answer within 0.5s" in health.error
            # The hung ping is not stacked up: the next check reports it still going.
            again = db.health(timeout=0.5)
            assert "still going" in again.error
            with pytest.raises(CallTimeoutError):
                db.ping(timeout=0.5)
        finally:
            proxy.cut()
            db.dispose()


def test_redis_ping_and_health(redis_server: RedisServer) -> None:
    cache = RedisDatabase(redis.Redis(host=redis_server.host, port=redis_server.port, max_connections=2))
    try:
        assert cache.ping() > 0
        health = cache.health()
        assert health.ok
        assert (health.in_use, health.max_connections) == (0, 2)
        held = [cache.client.connection_pool.get_connection() for _ in range(2)]
        saturated = cache.health()
        assert saturated.saturated
        assert saturated.reachable is None
        for connection in held:
            cache.client.connection_pool.release(connection)
        assert cache.health().ok
    finally:
        cache.close()


def test_redis_unreachable_is_reported() -> None:
    cache = RedisDatabase(redis.Redis(port=free_port(), socket_connect_timeout=2))
    try:
        health = cache.health()
        assert health.reachable is False
        assert "refused" in health.error.lower()
        with pytest.raises(DatabaseUnavailableError):
            cache.ping()
    finally:
        cache.close()
