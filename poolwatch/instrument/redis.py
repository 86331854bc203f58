"""Instrumenting a redis-py connection pool (``ConnectionPool`` or ``BlockingConnectionPool``).

As for SQLAlchemy, hooks record raw facts without a lock and the collector reads sizes at scrape
time. Here the pool's class is swapped for a per-instrumentation subclass whose ``get_connection()``
and ``release()`` wrap redis-py's: a class swap survives redis-py's ``reset()`` after a fork.
redis-py opens the socket inside ``get_connection()``, so wait time includes connecting. The private
parts read are in ``pool_internals()``, pinned by a test to the installed redis-py version.
"""

from __future__ import annotations

import sys
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from poolwatch.instrument.collector import PoolState, collector_for
from poolwatch.instrument.recorder import Recorder

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

# redis-py says "pool exhausted" with these (BlockingConnectionPool's wait timed out / the
# ConnectionPool's max_connections reached).
_EXHAUSTED_MESSAGES = ("no connection available", "too many connections")


@dataclass(frozen=True, slots=True)
class RedisPoolInternals:
    """The private parts of a redis-py pool poolwatch reads, in one place."""

    # The lock redis-py holds while it hands out a free connection: ConnectionPool's ``_lock``, and
    # for BlockingConnectionPool its queue's mutex (its get_connection() never takes ``_lock``).
    lock: Any
    # The free connections, read while ``lock`` is held (takes no lock itself).
    idle: Callable[[], list[Any]]
    free: Callable[[], Any]
    in_use: Callable[[], Any]


def pool_internals(pool: redis.ConnectionPool) -> RedisPoolInternals:
    """Every private attribute of redis-py poolwatch uses (tested against the installed version)."""
    if isinstance(pool, redis.BlockingConnectionPool):
        queue = pool.pool
        lock = queue.mutex
        idle: Callable[[], list[Any]] = lambda: [c for c in queue.queue if c is not None]  # noqa: E731
    else:
        lock = pool._lock  # noqa: SLF001
        idle = lambda: list(pool._available_connections)  # noqa: E731, SLF001
    return RedisPoolInternals(
        lock=lock,
        idle=idle,
        free=pool._get_free_connections,  # noqa: SLF001
        in_use=pool._get_in_use_connections,  # noqa: SLF001
    )


class RedisInstrumentation:
    """The instrumentation of one redis-py pool."""

    def __init__(self, pool: redis.ConnectionPool, name: str, recorder: Recorder) -> None:
        self.name = name
        self.recorder = recorder
        self._pool = weakref.ref(pool)
        self._registry_remove: Callable[[], None] | None = None

    @property
    def pool(self) -> redis.ConnectionPool | None:
        return self._pool()

    def state(self) -> PoolState | None:
        pool = self._pool()
        if pool is None:
            return None
        internals = pool_internals(pool)
        used = len(internals.in_use())
        idle = len(internals.free())
        limit = float(pool.max_connections)
        return PoolState(idle=idle, used=used, size=int(min(limit, 2**31)), max_connections=limit, overflow=0)

    def remove(self) -> None:
        if self._registry_remove is not None:
            self._registry_remove()
            self._registry_remove = None


def instrument_redis(
    client_or_pool: redis.Redis | redis.ConnectionPool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RedisInstrumentation:
    """Export the metrics of a redis-py client's (or pool's) connection pool on ``registry``."""
    pool = client_or_pool.connection_pool if isinstance(client_or_pool, redis.Redis) else client_or_pool
    if not isinstance(pool, redis.ConnectionPool):
        raise TypeError(
            f"poolwatch.instrument_redis({name!r}): {type(pool).__name__} is not a ConnectionPool"
        )
    if getattr(type(pool), "_poolwatch", None) is not None:
        raise ValueError(f"poolwatch.instrument_redis({name!r}): this pool is already instrumented")
    if leak_threshold is not None and leak_threshold <= 0:
        raise ValueError(f"poolwatch.instrument_redis({name!r}): leak_threshold must be > 0")
    recorder = Recorder(name, leak_threshold=leak_threshold, clock=clock)
    instrumentation = RedisInstrumentation(pool, name, recorder)
    collector = collector_for(registry)
    collector.add(name, instrumentation)
    instrumentation._registry_remove = lambda: collector.remove(name, instrumentation)  # noqa: SLF001
    pool.__class__ = _instrumented_class(type(pool), recorder)
    return instrumentation


def _instrumented_class(base: type[redis.ConnectionPool], recorder: Recorder) -> type[redis.ConnectionPool]:
    clock = recorder.clock
    count = next
    requested = recorder.requested.counter
    handed = recorder.handed.counter
    wait = recorder.waits.append
    use = recorder.uses.append
    stamps = recorder.stamps
    leaked = recorder.leaked
    getframe = sys._getframe if recorder.leak_threshold is not None else None  # noqa: SLF001
    base_get = base.get_connection
    base_release = base.release
    base_reset = base.reset

    def get_connection(self: redis.ConnectionPool, *args: Any, **kwargs: Any) -> Any:
        start = clock()
        count(requested)
        try:
            connection = base_get(self, *args, **kwargs)
        except BaseException as exc:
            _failed(recorder, exc)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            stamps[connection] = (now, getframe(1) if getframe is not None else None)
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    def release(self: redis.ConnectionPool, connection: Any) -> None:
        try:
            now = clock()
            checkout = stamps[connection]
            stamps[connection] = now
            use(now - checkout[0])  # type: ignore[index]
            if leaked:
                recorder.returned(connection, checkout)  # type: ignore[arg-type]
        except KeyError:  # checked out before instrument_redis(): no use time to record
            stamps[connection] = now
        except Exception as exc:
            recorder.internal_error(exc)
        base_release(self, connection)

    def reset(self: redis.ConnectionPool) -> None:
        base_reset(self)
        stamps.clear()  # redis-py forgets its connections (after a fork): so does poolwatch

    return type(
        base.__name__,
        (base,),
        {"get_connection": get_connection, "release": release, "reset": reset, "_poolwatch": recorder},
    )


def _failed(recorder: Recorder, exc: BaseException) -> None:
    try:
        exhausted = isinstance(exc, MaxConnectionsError) or (
            isinstance(exc, RedisConnectionError) and str(exc).lower().startswith(_EXHAUSTED_MESSAGES)
        )
        if exhausted:
            recorder.timed_out()
        else:
            recorder.checkout_failed(exc)
    except Exception as error:
        recorder.internal_error(error)
