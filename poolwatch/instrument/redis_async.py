"""Instrumenting a redis-py asyncio pool (``redis.asyncio.ConnectionPool`` / ``BlockingConnectionPool``,
or a ``redis.asyncio.Redis`` client's).

``get_connection()`` and ``release()`` (coroutines) are shadowed by hooks set as instance
attributes, each calling the pool class's own method looked up when it runs: waits (connecting
included, as redis-py connects inside ``get_connection()``), uses, checkouts, pending requests,
exhaustion ("Too many connections", or "No connection available." after a blocking pool's timeout)
counted as timeouts, and connect errors by reason. The asyncio pool holds its connections in use
weakly (a connection the application drops is collected), so poolwatch's ledger holds them by weak
reference too. Sizes are read from the pool's lists of free and in-use connections, by redis.py's
``async_pool_sizes()``: every private name of redis-py poolwatch reads is read there.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Final

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import (
    Base,
    async_checkout_hooks,
    check_threshold,
    new_recorder,
    register,
    shadow,
    undone_on_failure,
)
from poolwatch.instrument.recorder import Ledger
from poolwatch.instrument.redis import ASYNC_POOL_LISTS, async_pool_sizes
from poolwatch.serverlabel import redis_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.recorder import Recorder

_LIBRARY_DIR: Final = str(Path(redis.__file__).parent) + os.sep
_EXHAUSTED_MESSAGES: Final = ("no connection available", "too many connections")
_HOOKED: Final = ("get_connection", "release")
ATTACHED: Final = "_poolwatch"


def _exhausted(exc: BaseException) -> bool:
    return isinstance(exc, MaxConnectionsError) or (
        isinstance(exc, RedisConnectionError) and str(exc).lower().startswith(_EXHAUSTED_MESSAGES)
    )


class AsyncRedisInstrumentation(Base):
    """The instrumentation of one redis.asyncio pool."""

    def __init__(self, pool: redis.asyncio.ConnectionPool, name: str, recorder: Recorder) -> None:
        super().__init__(name, recorder)
        self._pool = weakref.ref(pool)

    @property
    def pool(self) -> redis.asyncio.ConnectionPool | None:
        return self._pool()

    def state(self) -> PoolState | None:
        pool = self._pool()
        if pool is None:
            return None
        idle, used = async_pool_sizes(pool)
        limit = float(pool.max_connections)
        return PoolState(idle=idle, used=used, size=int(min(limit, 2**31)), max_connections=limit, overflow=0)


def instrument_redis_async(
    client_or_pool: redis.asyncio.Redis | redis.asyncio.ConnectionPool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
    server: str | None = None,
) -> AsyncRedisInstrumentation:
    """Export the metrics of a redis.asyncio client's (or pool's) connection pool on ``registry``.

    Checked before anything changes: a ``TypeError`` / ``ValueError`` leaves the pool as it was.
    """
    pool = (
        client_or_pool.connection_pool if isinstance(client_or_pool, redis.asyncio.Redis) else client_or_pool
    )
    if not isinstance(pool, redis.asyncio.ConnectionPool):
        raise TypeError(
            f"poolwatch.instrument_redis({name!r}): {type(pool).__name__} is not a redis.asyncio "
            "ConnectionPool"
        )
    if getattr(getattr(pool, "get_connection", None), ATTACHED, None) is not None:
        raise ValueError(f"poolwatch.instrument_redis({name!r}): this pool is already instrumented")
    check_threshold("instrument_redis", name, leak_threshold)
    for attr in ASYNC_POOL_LISTS:
        if not hasattr(pool, attr):
            raise TypeError(f"poolwatch.instrument_redis({name!r}): {type(pool).__name__} has no {attr}")
    recorder = new_recorder(name, leak_threshold, clock, counts_from)
    instrumentation = AsyncRedisInstrumentation(pool, name, recorder)
    instrumentation.server = redis_server(pool.connection_kwargs) if server is None else server

    register(registry, instrumentation, undone_on_failure(pool, _HOOKED, lambda: _hook(pool, recorder)))
    return instrumentation


def _hook(pool: redis.asyncio.ConnectionPool, recorder: Recorder) -> None:
    ledger = Ledger()
    get, put = async_checkout_hooks(
        "get_connection",
        "release",
        weakref.ref(pool),
        recorder,
        ledger,
        exhausted=_exhausted,
        # The ledger key: the same weak reference object for a connection while it is alive
        # (CPython shares a callback-less one); a dropped connection's stays there as a leak.
        key=weakref.ref,
        library_dir=_LIBRARY_DIR,
        put_is_async=True,
    )
    get.__doc__ = type(pool).get_connection.__doc__
    put.__doc__ = type(pool).release.__doc__
    setattr(get, ATTACHED, ledger)
    shadow(pool, {"get_connection": get, "release": put})
    recorder.adopt(ledger)
