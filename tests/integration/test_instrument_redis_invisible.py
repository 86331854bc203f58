"""redis-py pools on a real Redis: instrumentation keeps every class and repr, honours later patches,
keeps no dropped object alive and fails before changing anything."""

from __future__ import annotations

import gc
import pickle
from typing import Any
from unittest import mock

import pytest
import redis
from prometheus_client import CollectorRegistry

import poolwatch
from tests.poolmetrics import sample

pytestmark = pytest.mark.integration

POOL_CLASSES = [redis.ConnectionPool, redis.BlockingConnectionPool]


def make_pool(server: Any, pool_class: type[redis.ConnectionPool], **options: Any) -> redis.ConnectionPool:
    return pool_class(host=server.host, port=server.port, password=server.password, **options)


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
@pytest.mark.parametrize("connection_class", [redis.Connection, redis.UnixDomainSocketConnection])
def test_pool_and_connection_classes_are_unchanged(redis_server, pool_class, connection_class) -> None:
    pool = pool_class(connection_class=connection_class, host=redis_server.host, port=redis_server.port)
    before = repr(pool)
    poolwatch.instrument_redis(pool, name="same", registry=CollectorRegistry(), leak_threshold=60)
    assert type(pool) is pool_class
    assert pool.connection_class is connection_class
    assert pickle.loads(pickle.dumps(pool.connection_class)) is connection_class
    assert repr(pool) == before


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_connections_keep_their_class_and_connect_patched_later_is_called(redis_server, pool_class) -> None:
    registry = CollectorRegistry()
    pool = make_pool(redis_server, pool_class)
    poolwatch.instrument_redis(pool, name="patched", registry=registry)
    client = redis.Redis(connection_pool=pool)
    with mock.patch.object(redis.Connection, "_connect", side_effect=OSError("patched away")):
        with pytest.raises(redis.ConnectionError, match="patched away"):
            client.ping()
    assert client.ping()
    connection = pool.get_connection()
    assert type(connection) is redis.Connection
    pool.release(connection)
    assert sample(registry, "pool_create_seconds_count", "patched") == 1
    assert sample(registry, "instrumentation_errors_total", "patched") == 0
    pool.disconnect()


def subscribe_and_drop(client: redis.Redis) -> None:
    """Subscribe and drop the PubSub without close(), as a forgetful application does."""
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    assert pubsub.get_message(timeout=5) is not None  # the subscribe confirmation


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_a_pubsub_dropped_without_close_gives_its_connection_back(redis_server, pool_class) -> None:
    registry = CollectorRegistry()
    pool = make_pool(
        redis_server,
        pool_class,
        max_connections=1,
        **({"timeout": 0.2} if pool_class is redis.BlockingConnectionPool else {}),
    )
    poolwatch.instrument_redis(pool, name="pubsub", registry=registry, leak_threshold=0.001)
    client = redis.Redis(connection_pool=pool)
    subscribe_and_drop(client)
    gc.collect()
    assert client.ping()  # the one connection came back: the pool is not exhausted
    assert sample(registry, "pool_timeouts_total", "pubsub") == 0
    assert sample(registry, "instrumentation_errors_total", "pubsub") == 0
    pool.disconnect()


def hold_and_drop(pool: redis.ConnectionPool) -> None:
    connection = pool.get_connection()
    connection.send_command("PING")
    assert connection.read_response() == b"PONG"


def test_a_checked_out_connection_is_not_kept_alive_by_leak_detection(redis_server) -> None:
    """The only reference poolwatch keeps to an application frame's locals would be the frame."""
    registry = CollectorRegistry()
    pool = make_pool(redis_server, redis.ConnectionPool)
    poolwatch.instrument_redis(pool, name="frames", registry=registry, leak_threshold=0.001)
    sentinel = mock.Mock()

    def checkout_with_a_local() -> Any:
        marker = sentinel.child()  # a local of the checking-out frame
        connection = pool.get_connection()
        return connection, id(marker)

    connection, _ = checkout_with_a_local()
    assert [r for r in gc.get_referrers(sentinel.child.return_value) if type(r).__name__ == "frame"] == []
    assert sample(registry, "pool_leaked_connections", "frames") == 1
    pool.release(connection)
    assert sample(registry, "pool_leaked_connections", "frames") == 0
    pool.disconnect()


def pool_state(pool: redis.ConnectionPool) -> dict[str, Any]:
    return {"vars": dict(vars(pool)), "class": type(pool), "connection_class": pool.connection_class}


def test_a_refused_instrument_redis_leaves_the_pool_as_it_was(redis_server) -> None:
    registry = CollectorRegistry()
    poolwatch.instrument_redis(make_pool(redis_server, redis.ConnectionPool), name="taken", registry=registry)
    pool = make_pool(redis_server, redis.ConnectionPool)
    before = pool_state(pool)
    with pytest.raises(ValueError, match="already instrumented on this registry"):
        poolwatch.instrument_redis(pool, name="taken", registry=registry)
    assert pool_state(pool) == before
    with pytest.raises(ValueError, match="leak_threshold must be > 0"):
        poolwatch.instrument_redis(pool, name="fresh", registry=registry, leak_threshold=-1)
    assert pool_state(pool) == before

    poolwatch.instrument_redis(pool, name="fresh", registry=registry)
    assert redis.Redis(connection_pool=pool).ping()
    assert sample(registry, "pool_checkouts_total", "fresh") == 1
    pool.disconnect()


class UntimedConnection(redis.Connection):
    """A connection class without redis-py's connect callback (a test double, say)."""

    register_connect_callback = None  # type: ignore[assignment]


def test_a_pool_whose_connections_cannot_be_timed_is_still_counted(redis_server) -> None:
    registry = CollectorRegistry()
    pool = redis.ConnectionPool(
        connection_class=UntimedConnection,
        host=redis_server.host,
        port=redis_server.port,
        password=redis_server.password,
    )
    poolwatch.instrument_redis(pool, name="untimed", registry=registry)
    assert redis.Redis(connection_pool=pool).ping()
    assert sample(registry, "pool_checkouts_total", "untimed") == 1
    assert sample(registry, "pool_create_seconds_count", "untimed") == 0
    assert sample(registry, "instrumentation_errors_total", "untimed") == 0
    pool.disconnect()


def test_a_failure_while_hooking_undoes_everything(redis_server, monkeypatch) -> None:
    from poolwatch.instrument import redis as adapter

    registry = CollectorRegistry()
    pool = make_pool(redis_server, redis.ConnectionPool)
    before = pool_state(pool)

    def broken(*_args: object) -> None:
        raise RuntimeError("hooking failed")

    monkeypatch.setattr(adapter, "_hook", broken)
    with pytest.raises(RuntimeError, match="hooking failed"):
        poolwatch.instrument_redis(pool, name="half", registry=registry)
    assert pool_state(pool) == before
    monkeypatch.undo()
    poolwatch.instrument_redis(pool, name="half", registry=registry)  # the name was given back
    pool.disconnect()


def test_a_failed_connect_and_a_failed_reconnect_are_no_internal_errors(redis_factory) -> None:
    server = redis_factory()
    registry = CollectorRegistry()
    pool = make_pool(server, redis.ConnectionPool, socket_connect_timeout=2)
    poolwatch.instrument_redis(pool, name="down", registry=registry, leak_threshold=60)
    client = redis.Redis(connection_pool=pool)
    assert client.ping()
    server.stop()
    for _ in range(3):  # the idle connection fails to reconnect and is handed back to the pool
        with pytest.raises(redis.ConnectionError):
            client.ping()
    server.start()
    assert client.ping()
    assert sample(registry, "pool_connect_errors_total", "down", reason="refused") >= 3
    assert sample(registry, "instrumentation_errors_total", "down") == 0
    assert sample(registry, "pool_pending_requests", "down") == 0
    pool.disconnect()


def test_a_leak_warning_shows_the_application_line_that_checked_out(redis_server, caplog) -> None:
    from tests.poolmetrics import FakeClock

    clock = FakeClock()
    registry = CollectorRegistry()
    client = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    poolwatch.instrument_redis(client, name="where", registry=registry, leak_threshold=1, clock=clock)
    caplog.set_level("WARNING", logger="poolwatch.instrument")
    pubsub = client.pubsub()
    pubsub.subscribe("news")  # this line must head the leak warning's stack
    clock.advance(2)
    assert sample(registry, "pool_leaked_connections", "where") == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    last = warning.rstrip().splitlines()[-2:]
    assert "in test_a_leak_warning_shows_the_application_line_that_checked_out" in last[0]
    assert 'pubsub.subscribe("news")  # this line must head' in last[1]
    pubsub.close()
    client.close()
