"""Pinned: the private parts of redis-py the adapter reads, against a fake RESP server in this process
(no redis-server), so a unit run after a redis-py upgrade fails here first. scripts/test runs this on
the oldest supported version too."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

import poolwatch
from poolwatch.instrument.redis import (
    ASYNC_POOL_LISTS,
    async_pool_connections,
    async_pool_sizes,
    pool_internals,
)
from tests.poolmetrics import sample

if TYPE_CHECKING:
    from collections.abc import Iterator

POOL_CLASSES = [redis.ConnectionPool, redis.BlockingConnectionPool]
ASYNC_POOL_CLASSES = [redis.asyncio.ConnectionPool, redis.asyncio.BlockingConnectionPool]
# redis-py before 5.3 needs a command name to hand a connection out; later ones deprecate passing it.
_NEEDS_COMMAND = (
    inspect.signature(redis.ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
    if "command_name" in inspect.signature(redis.ConnectionPool.get_connection).parameters
    else False
)


def checkout(pool: redis.ConnectionPool) -> Any:
    return pool.get_connection("PING") if _NEEDS_COMMAND else pool.get_connection()


class FakeRedis:
    """Answers every RESP command with +OK (PING with +PONG) on a loopback port: enough for redis-py
    to connect, hand shake and run PING."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        with client:
            while True:
                try:
                    data = client.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                commands, buffer = _split_commands(buffer)
                reply = b"".join(b"+PONG\r\n" if c.upper() == b"PING" else b"+OK\r\n" for c in commands)
                client.sendall(reply)

    def close(self) -> None:
        self._closing.set()
        self.listener.close()


def _split_commands(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete RESP arrays in ``buffer`` (their first word each), and what is left over."""
    commands = []
    while buffer.startswith(b"*"):
        lines = buffer.split(b"\r\n")
        count = int(lines[0][1:])
        if len(lines) < 1 + 2 * count + 1:
            break
        commands.append(lines[2])
        consumed = 1 + 2 * count
        buffer = b"\r\n".join(lines[consumed:])
    return commands, buffer


@pytest.fixture
def fake() -> Iterator[FakeRedis]:
    server = FakeRedis()
    yield server
    server.close()


def test_supported_version() -> None:
    major, minor, patch = (int(part) for part in redis.__version__.split(".")[:3])
    assert (5, 0, 1) <= (major, minor, patch) < (9, 0, 0)


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_pool_internals_read_the_pools_lists_lock_and_sockets(fake, pool_class) -> None:
    pool = pool_class(host="127.0.0.1", port=fake.port, protocol=2)
    internals = pool_internals(pool)
    connection = checkout(pool)
    assert list(internals.in_use()) == [connection]
    assert internals.connected(connection)
    with internals.lock():
        assert internals.idle() == []
    pool.release(connection)
    assert list(internals.free()) == [connection]
    with internals.lock():
        assert internals.idle() == [connection]
    connection.disconnect()
    assert not internals.connected(connection)
    pool.reset()  # after a fork: the accessors read the new lists and queue
    assert list(internals.free()) == []
    with internals.lock():
        assert internals.idle() == []
    pool.disconnect()


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_connects_are_timed_through_connect_and_the_connect_callback(fake, pool_class) -> None:
    assert callable(redis.Connection._connect)
    # register_connect_callback since redis-py 5.1, _register_connect_callback in 5.0
    assert callable(getattr(redis.Connection, "register_connect_callback", None)) or callable(
        getattr(redis.Connection, "_register_connect_callback", None)
    )
    registry = CollectorRegistry()
    pool = pool_class(host="127.0.0.1", port=fake.port, protocol=2)
    instrumentation = poolwatch.instrument_redis(pool, name="pin", registry=registry)
    client = redis.Redis(connection_pool=pool)
    assert client.ping()
    (connection,) = pool_internals(pool).free()
    assert type(connection) is redis.Connection
    assert instrumentation.opened(connection) is not None  # the callback ran after the handshake
    connection.disconnect()
    assert client.ping()  # reconnects: _connect() again, then the callback
    assert sample(registry, "pool_create_seconds_count", "pin") == 2
    assert fake.connections == 2
    assert sample(registry, "instrumentation_errors_total", "pin") == 0
    pool.disconnect()


@pytest.mark.parametrize("pool_class", POOL_CLASSES)
def test_a_fork_resets_the_pool_through_the_reset_hook(fake, pool_class) -> None:
    registry = CollectorRegistry()
    pool = pool_class(host="127.0.0.1", port=fake.port, protocol=2)
    instrumentation = poolwatch.instrument_redis(pool, name="fork", registry=registry, leak_threshold=60)
    held = checkout(pool)
    ledger = instrumentation.recorder.ledger
    assert held in ledger.checked_out
    pool.pid = -1  # what _checkpid() sees in a forked child
    fresh: Any = checkout(pool)  # _checkpid() -> reset(): the parent's connections are forgotten
    assert fresh is not held
    assert list(ledger.checked_out) == [fresh]
    pool.release(fresh)
    assert sample(registry, "pool_checkouts_total", "fork") == 2
    assert sample(registry, "instrumentation_errors_total", "fork") == 0
    pool.disconnect()


@pytest.mark.parametrize(
    ("pool_class", "missing"),
    [
        (redis.ConnectionPool, "_in_use_connections"),
        (redis.ConnectionPool, "_lock"),
        (redis.BlockingConnectionPool, "_connections"),
        (redis.BlockingConnectionPool, "pool"),
    ],
)
def test_a_pool_without_a_part_poolwatch_reads_is_a_type_error_naming_it(pool_class, missing) -> None:
    pool = pool_class(host="127.0.0.1", port=1)  # never connects: nothing is checked out
    delattr(pool, missing)
    before = dict(vars(pool))
    registry = CollectorRegistry()
    with pytest.raises(
        TypeError, match=rf"instrument_redis\('cache'\): {pool_class.__name__} has no {missing}\b"
    ):
        poolwatch.instrument_redis(pool, name="cache", registry=registry)
    assert vars(pool) == before  # nothing changed
    assert [s for family in registry.collect() for s in family.samples] == []  # nor registered


@pytest.mark.parametrize("pool_class", ASYNC_POOL_CLASSES)
def test_asyncio_pool_sizes_read_the_pools_lists(fake, pool_class) -> None:
    # What redis_async.py's hooks and sizes rely on: coroutine get_connection() / release(), and the
    # lists of free and in-use connections that redis.py's async_pool_sizes() counts.
    assert inspect.iscoroutinefunction(pool_class.get_connection)
    assert inspect.iscoroutinefunction(pool_class.release)
    pool = pool_class(host="127.0.0.1", port=fake.port, protocol=2, max_connections=3)
    assert all(hasattr(pool, attr) for attr in ASYNC_POOL_LISTS)
    assert async_pool_sizes(pool) == (0, 0)

    async def cycle() -> list[tuple[int, int]]:
        command = inspect.signature(pool_class.get_connection).parameters.get("command_name")
        needed = command is not None and command.default is inspect.Parameter.empty  # before 5.3
        connection = await (pool.get_connection("PING") if needed else pool.get_connection())
        sizes = [async_pool_sizes(pool)]
        await pool.release(connection)
        sizes.append(async_pool_sizes(pool))
        await pool.disconnect()
        return sizes

    assert asyncio.run(cycle()) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("pool_class", ASYNC_POOL_CLASSES)
def test_asyncio_connects_are_timed_through_connect_and_the_connect_callback(fake, pool_class) -> None:
    # What redis_async.py's make_connection hook relies on: connections made by make_connection(),
    # an awaited _connect() per connect, and a connect callback (kept weakly) after the handshake.
    assert inspect.iscoroutinefunction(redis.asyncio.Connection._connect)
    registry = CollectorRegistry()
    pool = pool_class(host="127.0.0.1", port=fake.port, protocol=2, max_connections=3)
    poolwatch.instrument_redis(pool, name="apin", registry=registry)
    client = redis.asyncio.Redis(connection_pool=pool)

    async def body() -> None:
        assert await client.ping()
        assert sample(registry, "pool_create_seconds_count", "apin") == 1
        (connection,) = async_pool_connections(pool)
        assert type(connection) is redis.asyncio.Connection
        await connection.disconnect()
        assert await client.ping()  # reconnects: _connect() again, then the callback
        assert sample(registry, "pool_create_seconds_count", "apin") == 2
        await pool.disconnect()

    asyncio.run(body())
    assert fake.connections == 2
    assert sample(registry, "instrumentation_errors_total", "apin") == 0


def test_asyncio_get_connection_is_awaited_past_only_the_deprecated_args_wrapper() -> None:
    # What redis_async.py's get_connection hook awaits when called without arguments: the method
    # under redis-py's deprecated_args wrapper (5.3+, whose wrapper then does nothing else), or the
    # class's own method.
    from poolwatch.instrument import redis_async

    for own, body in (
        (redis_async._PLAIN_GET, redis_async._PLAIN_BODY),
        (redis_async._BLOCKING_GET, redis_async._BLOCKING_BODY),
    ):
        assert inspect.iscoroutinefunction(body)
        assert body.__name__ == "get_connection"
        if body is not own:
            assert own.__wrapped__ is body
            assert own.__module__ == body.__module__ == "redis.asyncio.connection"
            assert own.__code__.co_filename.endswith(("redis/utils.py", "redis\\utils.py"))
