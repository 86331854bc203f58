"""Instrumenting a redis-py connection pool (``ConnectionPool`` or ``BlockingConnectionPool``).

As for SQLAlchemy, hooks record raw facts without a lock and the collector reads sizes at scrape
time. Here the pool's class is swapped for a per-instrumentation subclass whose ``get_connection()``
and ``release()`` wrap redis-py's: a class swap survives redis-py's ``reset()`` after a fork.
redis-py opens the socket inside ``get_connection()``, so wait time includes connecting.

Connects are timed by the pool's ``connection_class``, replaced by a subclass that wraps the two
methods redis-py calls only when it actually opens a connection: ``_connect()`` (the socket) and the
handshake after it (AUTH, HELLO, SETNAME, SELECT). ``connect()`` itself runs on every checkout and
returns at once when connected, so it is left alone. ``reset()`` keeps ``connection_class``.

The private parts read are in ``pool_internals()``, pinned by a test to the installed redis-py version.
"""

from __future__ import annotations

import random
import sys
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from poolwatch.instrument.collector import PoolState, collector_for
from poolwatch.instrument.recorder import MAX_JITTER, Recorder

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

# redis-py says "pool exhausted" with these (BlockingConnectionPool's wait timed out / the
# ConnectionPool's max_connections reached).
_EXHAUSTED_MESSAGES = ("no connection available", "too many connections")
# Set on each connection poolwatch times: (recorder-clock time it last connected, its share of the
# max-lifetime jitter). redis-py reconnects the same object after a disconnect: both are redrawn then.
OPENED: Final = "_poolwatch_opened"
_STARTED: Final = "_poolwatch_started"  # recorder-clock time the socket being opened was asked for


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
    connected: Callable[[Any], bool]


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
        connected=lambda connection: getattr(connection, "_sock", None) is not None,
    )


def opened(connection: object) -> tuple[float, float] | None:
    """When ``connection`` last connected (recorder clock) and its lifetime jitter; None if unknown."""
    stamp = vars(connection).get(OPENED)
    return stamp if isinstance(stamp, tuple) else None


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
    counts_from: Recorder | None = None,
) -> RedisInstrumentation:
    """Export the metrics of a redis-py client's (or pool's) connection pool on ``registry``
    (``counts_from``: as for ``instrument``)."""
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
    if counts_from is not None:  # before the collector can read it: never a drop to 0
        recorder.carry(counts_from)
    instrumentation = RedisInstrumentation(pool, name, recorder)
    collector = collector_for(registry)
    collector.add(name, instrumentation)
    instrumentation._registry_remove = lambda: collector.remove(name, instrumentation)  # noqa: SLF001
    pool.__class__ = _instrumented_class(type(pool), recorder)
    _time_connects(pool, recorder)
    return instrumentation


def _time_connects(pool: redis.ConnectionPool, recorder: Recorder) -> None:
    """Time the pool's connects from now on, its existing connections' included.

    A connection opened before ``instrument_redis()`` has no known open time: it ages from now.
    """
    base = pool.connection_class
    timed = _timed_connection_class(base, recorder)
    pool.connection_class = timed
    internals = pool_internals(pool)
    now = recorder.clock()
    for connection in [*internals.free(), *internals.in_use()]:
        if type(connection) is base:  # not a client-side-caching proxy, nor another class
            connection.__class__ = timed  # same layout, methods only: safe on a live object
            if internals.connected(connection):
                vars(connection)[OPENED] = (now, random.uniform(0.0, MAX_JITTER))  # noqa: S311


def _timed_connection_class(base: type[Any], recorder: Recorder) -> type[Any]:
    """A subclass of ``base`` recording each actual connect's duration and time into ``recorder``.

    Only poolwatch's own work is guarded: redis-py's errors pass through untouched (a failed connect
    is counted once, as a connect error, by the checkout hook).
    """
    clock = recorder.clock
    base_socket = base._connect  # noqa: SLF001
    # Newer redis-py handshakes in on_connect_check_health() (on_connect() calls it), older in on_connect().
    handshake_name = "on_connect_check_health" if hasattr(base, "on_connect_check_health") else "on_connect"
    base_handshake = getattr(base, handshake_name)

    def _connect(self: Any) -> Any:
        try:
            started: float | None = clock()
        except Exception as exc:
            recorder.internal_error(exc)
            started = None
        sock = base_socket(self)
        self.__dict__[_STARTED] = started  # every redis-py connection has a __dict__
        return sock

    def handshake(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = base_handshake(self, *args, **kwargs)
        finally:
            started = self.__dict__.pop(_STARTED, None)
        try:
            now = clock()
            if started is not None:
                recorder.connected(now - started)
            self.__dict__[OPENED] = (now, random.uniform(0.0, MAX_JITTER))  # noqa: S311 - not crypto
        except Exception as exc:
            recorder.internal_error(exc)
        return result

    return type(
        base.__name__,
        (base,),
        {
            "_connect": _connect,
            handshake_name: handshake,
            "__module__": base.__module__,  # the pool's repr names its connection class
            "__qualname__": base.__qualname__,
            "_poolwatch": recorder,
        },
    )


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
