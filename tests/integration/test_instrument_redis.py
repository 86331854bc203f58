"""poolwatch.instrument_redis on a real Redis: the same families as SQL pools, connect timing, and
idle eviction (max lifetime: test_housekeeping_redis.py)."""

from __future__ import annotations

import os
import threading
import uuid
from typing import TYPE_CHECKING

import pytest
import redis
from prometheus_client import CollectorRegistry

import poolwatch
from poolwatch.config import validate
from poolwatch.database import create_target_redis
from poolwatch.housekeeping import Housekeeper, HousekeepingPolicy
from poolwatch.instrument.redis import pool_internals
from tests.daemonkit import wait_for
from tests.poolmetrics import FakeClock, sample, waits
from tests.servers import free_port
from tests.threads import acquiring

if TYPE_CHECKING:
    from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def client_names(server: RedisServer) -> list[str]:
    return [c.get("name", "") for c in server.client().client_list()]


def kill_clients(server: RedisServer, name: str) -> int:
    """CLIENT KILL every connection named ``name`` (server side); how many there were."""
    admin = server.client()
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    admin.close()
    return len(ids)


def unique_name() -> str:
    return f"pw-{uuid.uuid4().hex[:8]}"


POOL_CLASSES = [redis.ConnectionPool, redis.BlockingConnectionPool]


def test_commands_count_checkouts_and_use(redis_server) -> None:
    registry = CollectorRegistry()
    client = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    poolwatch.instrument_redis(client, name="cache", registry=registry)
    for _ in range(3):
        client.ping()
    assert sample(registry, "pool_checkouts_total", "cache") == 3
    assert sample(registry, "pool_wait_seconds_count", "cache") == 3
    assert sample(registry, "pool_use_seconds_count", "cache") == 3
    assert sample(registry, "pool_connections", "cache", state="idle") == 1
    assert sample(registry, "pool_connections", "cache", state="used") == 0
    assert sample(registry, "pool_max_connections", "cache") == client.connection_pool.max_connections
    client.close()


def test_blocking_pool_exhaustion_counts_timeouts_and_pending(redis_server) -> None:
    registry = CollectorRegistry()
    pool = redis.BlockingConnectionPool(
        host=redis_server.host,
        port=redis_server.port,
        password=redis_server.password,
        max_connections=1,
        timeout=0.5,
    )
    poolwatch.instrument_redis(pool, name="blocking", registry=registry)
    held = pool.get_connection()
    count, total = waits(registry, "blocking")
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            redis.Redis(connection_pool=pool).ping()
        except redis.ConnectionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join()
    pool.release(held)
    assert len(errors) == 1
    assert sample(registry, "pool_timeouts_total", "blocking") == 1
    # The timed-out checkout is in the wait histogram, with at least the 0.5 s it waited.
    after_count, after_total = waits(registry, "blocking")
    assert after_count == count + 1
    assert after_total - total >= 0.5
    assert sample(registry, "pool_pending_requests", "blocking") == 0
    assert sample(registry, "pool_connect_errors_total", "blocking", reason="other") == 0
    pool.disconnect()


def test_connection_pool_limit_counts_as_a_timeout(redis_server) -> None:
    registry = CollectorRegistry()
    pool = redis.ConnectionPool(
        host=redis_server.host, port=redis_server.port, password=redis_server.password, max_connections=1
    )
    poolwatch.instrument_redis(pool, name="limited", registry=registry)
    held = pool.get_connection()
    count, total = waits(registry, "limited")
    with pytest.raises(redis.ConnectionError):
        pool.get_connection()
    pool.release(held)
    assert sample(registry, "pool_timeouts_total", "limited") == 1
    after_count, after_total = waits(registry, "limited")
    assert after_count == count + 1  # refused at once: a wait of about 0
    assert after_total >= total
    pool.disconnect()


def test_connect_errors_by_reason_refused_and_auth(redis_factory) -> None:
    registry = CollectorRegistry()
    refused = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=2)
    poolwatch.instrument_redis(refused, name="refused", registry=registry)
    with pytest.raises(redis.ConnectionError):
        refused.ping()
    assert sample(registry, "pool_connect_errors_total", "refused", reason="refused") == 1
    assert sample(registry, "pool_create_seconds_count", "refused") == 0

    server = redis_factory(password="right-" + uuid.uuid4().hex)
    wrong = redis.Redis(host=server.host, port=server.port, password="wrong")
    poolwatch.instrument_redis(wrong, name="auth", registry=registry)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert sample(registry, "pool_connect_errors_total", "auth", reason="auth") == 1
    # The socket opened, the handshake failed: a connect error, not a connection created.
    assert sample(registry, "pool_create_seconds_count", "auth") == 0
    assert sample(registry, "instrumentation_errors_total", "auth") == 0


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_create_histogram_counts_every_connection_opened_and_reopened(redis_server, pool_class) -> None:
    registry = CollectorRegistry()
    name = unique_name()
    pool = pool_class(
        host=redis_server.host,
        port=redis_server.port,
        password=redis_server.password,
        client_name=name,
        max_connections=5,
    )
    poolwatch.instrument_redis(pool, name="cache", registry=registry)
    client = redis.Redis(connection_pool=pool)

    def creates() -> float:
        return sample(registry, "pool_create_seconds_count", "cache")

    held = [pool.get_connection() for _ in range(3)]
    for connection in held:
        pool.release(connection)
    assert creates() == 3
    for _ in range(5):
        client.ping()
    assert creates() == 3  # connected connections are reused, not reopened
    assert sample(registry, "pool_create_seconds_sum", "cache") > 0  # a real duration was measured
    assert kill_clients(redis_server, name) == 3
    assert client.ping()  # one connection notices, reconnects
    assert creates() == 4
    held = [pool.get_connection() for _ in range(3)]  # the other two reconnect on checkout
    for connection in held:
        pool.release(connection)
    assert creates() == 6
    assert client_names(redis_server).count(name) == 3
    assert sample(registry, "pool_connect_errors_total", "cache", reason="other") == 0
    assert sample(registry, "instrumentation_errors_total", "cache") == 0
    pool.disconnect()


def test_connects_after_a_fork_are_timed_in_the_child(redis_server) -> None:
    """redis-py's reset() in the child keeps the timed connection class: its new connection counts."""
    registry = CollectorRegistry()
    client = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    poolwatch.instrument_redis(client, name="forked", registry=registry)
    client.ping()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        try:
            client.ping()
            result = f"{sample(registry, 'pool_create_seconds_count', 'forked'):g}"
        except BaseException as exc:
            result = f"error {type(exc).__name__}: {exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        reported = pipe.read()
    os.waitpid(pid, 0)
    assert reported == "2"  # the parent's connection, then the child's own
    assert sample(registry, "pool_create_seconds_count", "forked") == 1
    client.close()


def test_connections_opened_before_instrumenting_are_timed_from_their_next_connect(redis_server) -> None:
    registry = CollectorRegistry()
    name = unique_name()
    client = redis.Redis(
        host=redis_server.host, port=redis_server.port, password=redis_server.password, client_name=name
    )
    client.ping()
    poolwatch.instrument_redis(client, name="early", registry=registry)
    assert sample(registry, "pool_create_seconds_count", "early") == 0
    assert kill_clients(redis_server, name) == 1
    assert client.ping()
    assert sample(registry, "pool_create_seconds_count", "early") == 1
    client.close()


def test_a_failing_connect_hook_is_counted_and_never_raised(redis_server) -> None:
    registry = CollectorRegistry()
    client = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    instrumentation = poolwatch.instrument_redis(client, name="broken", registry=registry)

    def broken(seconds: float) -> None:
        raise RuntimeError("poolwatch bug")

    instrumentation.recorder.connected = broken  # type: ignore[method-assign]
    assert client.ping()
    assert sample(registry, "instrumentation_errors_total", "broken") == 1
    assert sample(registry, "pool_checkouts_total", "broken") == 1
    client.close()


def test_idle_eviction_disconnects_down_to_min_idle(redis_server) -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    name = f"pw-hk-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(host=redis_server.host, port=redis_server.port, client_name=name)
    instrumentation = poolwatch.instrument_redis(client, name="evict", registry=registry, clock=clock)
    pool = client.connection_pool
    held = [pool.get_connection() for _ in range(3)]
    for connection in held:
        pool.release(connection)
    assert client_names(redis_server).count(name) == 3
    keeper = Housekeeper(instrumentation, HousekeepingPolicy(min_idle=1, idle_timeout=30))
    clock.advance(29)
    assert keeper.run_once().closed == {}
    clock.advance(2)
    assert keeper.run_once().closed == {"idle_timeout": 2}
    assert sample(registry, "pool_closed_total", "evict", reason="idle_timeout") == 2
    assert client_names(redis_server).count(name) == 1
    assert client.ping()  # disconnected connections reconnect on their next use
    client.close()


def test_target_client_sets_its_client_name(redis_server) -> None:
    settings = validate({"targets": [{"name": "cache", "kind": "redis", "url": redis_server.url()}]})
    client = create_target_redis(settings.targets[0])
    client.ping()
    assert "poolwatch-cache" in client_names(redis_server)
    client.close()


def test_private_redis_api_matches_the_installed_version(redis_server) -> None:
    """Pinned: poolwatch reads these private names; a redis-py upgrade must keep them or fail here."""
    assert int(redis.__version__.split(".")[0]) >= 5
    for pool_class in POOL_CLASSES:
        pool = pool_class(host=redis_server.host, port=redis_server.port, password=redis_server.password)
        internals = pool_internals(pool)
        connection = pool.get_connection()
        assert len(internals.in_use()) == 1
        assert internals.connected(connection)
        pool.release(connection)
        assert list(internals.free()) == [connection]
        with internals.lock():
            assert internals.idle() == [connection]
        connection.disconnect()
        assert not internals.connected(connection)
        pool.disconnect()


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_housekeeping_lock_keeps_free_connections_from_being_handed_out(redis_server, pool_class) -> None:
    """Housekeeping disconnects idle connections under ``lock``: no caller may take one meanwhile."""
    pool = pool_class(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    pool.release(pool.get_connection())
    internals = pool_internals(pool)
    taken: list[object] = []
    caller = threading.Thread(target=lambda: taken.append(pool.get_connection()))
    with internals.lock():
        caller.start()
        # Until the caller either got a connection (the failure) or waits for the lock in
        # get_connection(), which it does for as long as the lock is held.
        wait_for(lambda: bool(taken) or acquiring(caller, "get_connection"), 10, "the caller at the lock")
        assert not taken, "a connection was handed out while housekeeping held the lock"
    caller.join()
    assert len(taken) == 1
    pool.release(taken[0])
    pool.disconnect()
