"""Instrumenting a redis-py connection pool (``ConnectionPool`` or ``BlockingConnectionPool``).

As for SQLAlchemy, hooks record raw facts without a lock and the collector reads sizes at scrape
time. ``get_connection()``, ``release()``, ``make_connection()`` and ``reset()`` are shadowed by hooks
set as instance attributes on the pool: the pool's class, its ``connection_class`` and its
connections' classes stay what they were. Each hook looks redis-py's method up on the pool's class
when it is called, so a later patch is honoured; instance attributes survive ``reset()`` after a fork
(which the ``reset`` hook follows by forgetting every connection). redis-py opens the socket inside
``get_connection()``, so wait time includes connecting.

Connects are timed from the socket to the end of the handshake (AUTH, HELLO, SETNAME, SELECT): the
start by a ``_connect`` attribute on each connection of the pool that calls its class's ``_connect``
(looked up at each call), the end by redis-py's public connect callback, which runs only after a
successful handshake. Every private name of redis-py poolwatch reads is read in this module
(``pool_internals()``, once per pool; ``async_pool_sizes()`` for the asyncio pools of
redis_async.py), pinned by tests/unit/test_redis_internals.py and test_private_names.py.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from poolwatch.instrument.collector import PoolState, collector_for
from poolwatch.instrument.common import shadow
from poolwatch.instrument.holder import HOLDER_LIMIT, check_holder_limit
from poolwatch.instrument.holder import current as current_holder
from poolwatch.instrument.recorder import MAX_JITTER, Ledger, Recorder, capture_origin_outside
from poolwatch.serverlabel import redis_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

# redis-py says "pool exhausted" with these (BlockingConnectionPool's wait timed out / the
# ConnectionPool's max_connections reached).
_EXHAUSTED_MESSAGES = ("no connection available", "too many connections")
# redis-py's own frames (client, pipeline, PubSub) between a checkout and the application are skipped.
_REDIS_DIR: Final = str(Path(redis.__file__).parent) + os.sep
# The attribute of the pool's get_connection hook that marks the pool as instrumented: the pool's own
# __dict__ gets no key but the names of the methods it shadows.
ATTACHED: Final = "_poolwatch"
_HOOKED: Final = ("get_connection", "release", "make_connection", "reset")


@dataclass(frozen=True, slots=True)
class RedisPoolInternals:
    """The private parts of a redis-py pool poolwatch reads, as accessors built once per pool.

    Accessors, not values: ``reset()`` (after a fork) replaces the lists and the queue they read.
    """

    # The lock redis-py holds while it hands out a free connection: ConnectionPool's ``_lock``, and
    # for BlockingConnectionPool its queue's mutex (its get_connection() never takes ``_lock``).
    lock: Callable[[], Any]
    # The free connections, read while ``lock`` is held (takes no lock itself).
    idle: Callable[[], list[Any]]
    free: Callable[[], Any]
    in_use: Callable[[], Any]
    connected: Callable[[Any], bool]


def pool_internals(pool: redis.ConnectionPool) -> RedisPoolInternals:
    """Every private attribute of redis-py poolwatch uses (pinned by a test)."""
    if isinstance(pool, redis.BlockingConnectionPool):
        blocking = pool

        def idle() -> list[Any]:
            return [c for c in blocking.pool.queue if c is not None]

        def in_use() -> list[Any]:
            free = {id(c) for c in idle()}
            return [c for c in blocking._connections if id(c) not in free]

        return RedisPoolInternals(
            lock=lambda: blocking.pool.mutex,
            idle=idle,
            free=idle,
            in_use=in_use,
            connected=_connected,
        )
    return RedisPoolInternals(
        lock=lambda: pool._lock,
        idle=lambda: list(pool._available_connections),
        free=lambda: list(pool._available_connections),
        in_use=lambda: list(pool._in_use_connections),
        connected=_connected,
    )


# The attributes of each pool class poolwatch reads (pool_internals() and the hooks): checked before
# anything changes, so a redis-py that renamed one is a TypeError naming it, not a later AttributeError.
_NEEDED: Final = {
    redis.BlockingConnectionPool: ("pool", "pool.queue", "pool.mutex", "_connections", "connection_kwargs"),
    redis.ConnectionPool: ("_lock", "_available_connections", "_in_use_connections", "connection_kwargs"),
}


def missing_internals(pool: redis.ConnectionPool) -> list[str]:
    """The attributes of ``pool`` poolwatch reads that it lacks (none for a redis-py it supports)."""
    needed = next(names for cls, names in _NEEDED.items() if isinstance(pool, cls))
    missing: list[str] = []
    for dotted in needed:
        if any(dotted.startswith(f"{name}.") for name in missing):
            continue  # its parent is named already
        owner: Any = pool
        for part in dotted.split("."):
            owner = getattr(owner, part, _ABSENT)
            if owner is _ABSENT:
                missing.append(dotted)
                break
    return missing


_ABSENT: Final = object()


# A redis.asyncio pool's lists of free and in-use connections (instrument_redis_async checks them).
ASYNC_POOL_LISTS: Final = ("_available_connections", "_in_use_connections")


def async_pool_sizes(pool: Any) -> tuple[int, int]:
    """A redis.asyncio pool's free and in-use connections, counted (at scrape time)."""
    return len(pool._available_connections), len(pool._in_use_connections)


def watching_make_connection(
    ref: Callable[[], Any], recorder: Recorder, watch: Callable[[Any], None]
) -> Callable[[], Any]:
    """A ``make_connection`` hook (sync and asyncio pools alike: the method is plain in both): the
    pool class's method, then ``watch`` on the new connection, to time its connects."""

    def make_connection() -> Any:
        this = ref()
        connection = type(this).make_connection(this)
        try:
            watch(connection)
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    return make_connection


def async_pool_connections(pool: Any) -> list[Any]:
    """A redis.asyncio pool's connections, free and in use."""
    return [*pool._available_connections, *pool._in_use_connections]


def time_async_connects(
    connection: Any,
    started: Callable[[Any], None],
    connected: Callable[[Any], None],
    internal: Callable[[BaseException], None],
) -> None:
    """Call ``started(connection)`` as a redis.asyncio connection's socket step begins (a ``_connect``
    attribute awaiting its class's ``_connect``, looked up at each call) and ``connected`` (a bound
    method: redis-py keeps connect callbacks weakly) after each successful handshake. A connection
    timed already, or of a class that cannot be, is left as it is."""
    # `is True`: a class attribute patched with a mock answers any attribute with a new mock.
    hook = getattr(connection, "_connect", None)
    if getattr(hook, ATTACHED, None) is True or not _times_connects(type(connection)):
        return
    ref: Callable[[], Any] = weakref.ref(connection)

    async def _connect() -> Any:
        target = ref()
        try:
            started(target)
        except Exception as exc:
            internal(exc)
        return await type(target)._connect(target)

    setattr(_connect, ATTACHED, True)
    shadow(connection, {"_connect": _connect})
    _register_connect_callback(connection, connected)


def _connected(connection: Any) -> bool:
    return getattr(connection, "_sock", None) is not None


def _register_connect_callback(connection: Any, callback: Callable[[Any], None]) -> None:
    """redis-py's connect callback (public since 5.1; ``_register_connect_callback`` in 5.0)."""
    register = getattr(connection, "register_connect_callback", None)
    if register is None:
        register = connection._register_connect_callback
    register(callback)


def _times_connects(connection_class: type[Any]) -> bool:
    """Whether connections of this class can be timed: redis-py's socket step and connect callback."""
    register = getattr(connection_class, "register_connect_callback", None) or getattr(
        connection_class, "_register_connect_callback", None
    )
    return callable(getattr(connection_class, "_connect", None)) and callable(register)


class RedisInstrumentation:
    """The instrumentation of one redis-py pool."""

    def __init__(self, pool: redis.ConnectionPool, name: str, recorder: Recorder, server: str = "") -> None:
        self.name = name
        self.recorder = recorder
        self.server = server
        self._pool = weakref.ref(pool)
        self._internals = pool_internals(pool)
        # connection -> recorder-clock time its socket step started (a connect under way)
        self._starts: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        # connection -> (recorder-clock time it last connected, its share of the max-lifetime jitter)
        self._opened: weakref.WeakKeyDictionary[Any, tuple[float, float]] = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()  # WeakKeyDictionary writes from several threads (and finalizers)
        self._registry_remove: Callable[[], None] | None = None

    @property
    def pool(self) -> redis.ConnectionPool | None:
        return self._pool()

    def internals(self) -> RedisPoolInternals:
        """The pool's internals (accessors built when it was instrumented)."""
        return self._internals

    def state(self) -> PoolState | None:
        pool = self._pool()
        if pool is None:
            return None
        used = len(self._internals.in_use())
        idle = len(self._internals.free())
        limit = float(pool.max_connections)
        return PoolState(idle=idle, used=used, size=int(min(limit, 2**31)), max_connections=limit, overflow=0)

    def remove(self) -> None:
        if self._registry_remove is not None:
            self._registry_remove()
            self._registry_remove = None

    def opened(self, connection: object) -> tuple[float, float] | None:
        """When ``connection`` last connected (recorder clock) and its lifetime jitter; None if unknown."""
        return self._opened.get(connection)

    def forget_opened(self, connection: object) -> None:
        with self._lock:
            self._opened.pop(connection, None)

    # -- connect timing ------------------------------------------------------------------------

    def watch(self, connection: Any, *, connected_now: bool = False) -> None:
        """Time ``connection``'s connects from now on (a connection of this pool, new or adopted)."""
        # `is True`: a class attribute patched with a mock answers any attribute with a new mock.
        hook = getattr(connection, "_connect", None)
        if getattr(hook, ATTACHED, None) is True or not _times_connects(type(connection)):
            return  # watched already, or a proxy (client-side caching) whose inner connection connects
        ref: Callable[[], Any] = weakref.ref(connection)
        clock, starts, lock = self.recorder.clock, self._starts, self._lock
        internal = self.recorder.internal_error

        def _connect() -> Any:
            target = ref()
            try:
                with lock:
                    starts[target] = clock()
            except Exception as exc:
                internal(exc)
            return type(target)._connect(target)

        setattr(_connect, ATTACHED, True)
        shadow(connection, {"_connect": _connect})
        _register_connect_callback(connection, self._on_connect)
        if connected_now:  # opened before instrument_redis(): it ages from now
            with self._lock:
                self._opened[connection] = (clock(), random.uniform(0.0, MAX_JITTER))  # noqa: S311

    def _on_connect(self, connection: Any) -> None:
        """redis-py's connect callback: the handshake succeeded (runs on every connect and reconnect)."""
        try:
            now = self.recorder.clock()
            with self._lock:
                started = self._starts.pop(connection, None)
                self._opened[connection] = (now, random.uniform(0.0, MAX_JITTER))  # noqa: S311
            if started is not None:
                self.recorder.connected(now - started)
        except Exception as exc:
            self.recorder.internal_error(exc)


def instrument_redis(
    client_or_pool: redis.Redis | redis.ConnectionPool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
    server: str | None = None,
    holders: int = HOLDER_LIMIT,
) -> RedisInstrumentation:
    """Export the metrics of a redis-py client's (or pool's) connection pool on ``registry``.

    Everything is checked before anything changes: a ``TypeError`` / ``ValueError`` leaves the pool
    as it was (not a redis-py pool, or one without a private part poolwatch reads, instrumented
    already, the name taken on this registry, a bad ``leak_threshold``). Connections of a class
    without redis-py's connect steps (``_connect()`` and the connect callback: a test double, say)
    are counted like any other but their connects are not timed. ``counts_from``, ``server`` and
    ``holders``: as for ``instrument`` (the default label is the pool's ``host:port/db``).
    """
    pool = client_or_pool.connection_pool if isinstance(client_or_pool, redis.Redis) else client_or_pool
    if not isinstance(pool, redis.ConnectionPool):
        raise TypeError(
            f"poolwatch.instrument_redis({name!r}): {type(pool).__name__} is not a ConnectionPool"
        )
    if missing := missing_internals(pool):
        raise TypeError(
            f"poolwatch.instrument_redis({name!r}): {type(pool).__name__} has no {', '.join(missing)} "
            "(redis-py's pool internals poolwatch reads)"
        )
    if _attached_ledger(pool) is not None:
        raise ValueError(f"poolwatch.instrument_redis({name!r}): this pool is already instrumented")
    if leak_threshold is not None and not leak_threshold > 0:
        raise ValueError(f"poolwatch.instrument_redis({name!r}): leak_threshold must be > 0")
    check_holder_limit(holders, f"poolwatch.instrument_redis({name!r})")
    collector = collector_for(registry)
    recorder = Recorder(name, leak_threshold=leak_threshold, clock=clock)
    recorder.by_holder.labels.limit = holders
    if counts_from is not None:  # before the collector can read it: never a drop to 0
        recorder.carry(counts_from)
    if server is None:
        server = redis_server(pool.connection_kwargs)
    instrumentation = RedisInstrumentation(pool, name, recorder, server)
    collector.add(name, instrumentation)  # raises ValueError if the name is taken: nothing changed yet
    instrumentation._registry_remove = lambda: collector.remove(name, instrumentation)
    try:
        _hook(pool, instrumentation)
    except BaseException:
        for hooked in _HOOKED:
            vars(pool).pop(hooked, None)
        instrumentation.remove()
        raise
    return instrumentation


def _hook(pool: redis.ConnectionPool, instrumentation: RedisInstrumentation) -> None:
    """Shadow the pool's checkout, release, connection making and reset (instance attributes).

    The hooks refer to the pool weakly: no reference cycle keeps a dropped pool (and its sockets)
    alive until the garbage collector runs.
    """
    recorder, internals = instrumentation.recorder, instrumentation.internals()
    ref: Callable[[], Any] = weakref.ref(pool)
    with internals.lock():
        idle = internals.idle()
    ledger = Ledger(idle, recorder.clock())

    make_connection = watching_make_connection(ref, recorder, instrumentation.watch)

    def reset() -> None:
        this = ref()
        type(this).reset(this)
        ledger.clear()  # redis-py forgets its connections (after a fork): so does poolwatch

    for connection in [*internals.free(), *internals.in_use()]:
        _watch(instrumentation, connection)
    get_connection, release = _checkout_hooks(ref, recorder, ledger)
    get_connection.__doc__ = type(pool).get_connection.__doc__
    setattr(get_connection, ATTACHED, ledger)
    release.__doc__ = type(pool).release.__doc__
    shadow(
        pool,
        {
            "get_connection": get_connection,
            "release": release,
            "make_connection": make_connection,
            "reset": reset,
        },
    )
    recorder.adopt(ledger)


def _attached_ledger(pool: object) -> Ledger | None:
    """The ledger of an instrumented pool's hook (not an attribute a mock patched in answers)."""
    ledger = getattr(getattr(pool, "get_connection", None), ATTACHED, None)
    return ledger if isinstance(ledger, Ledger) else None


def _watch(instrumentation: RedisInstrumentation, connection: Any) -> None:
    """Adopt a connection the pool had before instrumenting: its connect times are all that is lost
    if this fails."""
    try:
        connected = instrumentation.internals().connected(connection)
        instrumentation.watch(connection, connected_now=connected)
    except Exception as exc:
        instrumentation.recorder.internal_error(exc)


def _checkout_hooks(  # noqa: C901, PLR0915 - unrolled on purpose: each local saves a lookup per call
    ref: Callable[[], Any], recorder: Recorder, ledger: Ledger
) -> tuple[Callable[..., Any], Callable[[Any], None]]:
    clock = recorder.clock
    count = next
    requested = recorder.requested.counter
    handed = recorder.handed.counter
    wait = recorder.waits.append
    use = recorder.uses.append
    hold = recorder.by_holder.hold
    internal = recorder.internal_error
    checked_out = ledger.checked_out
    take = checked_out.pop
    idle_since = ledger.idle_since
    origins = ledger.origins
    holders = ledger.holders
    holder_now = current_holder
    leaked = recorder.leaked
    tracking = recorder.leak_threshold is not None
    threshold = recorder.leak_threshold or 0.0

    def get_connection(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            connection = type(this).get_connection(this, *args, **kwargs)
        except BaseException as exc:
            _failed(recorder, exc, start)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            if tracking:
                origins[connection] = capture_origin_outside(_REDIS_DIR)
            checked_out[connection] = now
            holder = holder_now()
            if holder is not None:
                holders[connection] = holder
        except Exception as exc:
            internal(exc)
        return connection

    def release(connection: Any) -> None:
        try:
            now = clock()
            started = take(connection, None)  # None: never handed out (a failed connect), or earlier
            idle_since[connection] = now
            if started is not None:
                held = now - started
                holder = holders.pop(connection, None) if holders else None
                if holder is None:
                    use(held)
                else:
                    hold((holder, held))
                if tracking:
                    origin = origins.pop(connection, None)
                    if leaked or held > threshold:  # known leaks, or one no scrape saw out
                        recorder.returned(connection, held, holder, origin)
        except Exception as exc:
            internal(exc)
        this = ref()
        type(this).release(this, connection)

    return get_connection, release


def _failed(recorder: Recorder, exc: BaseException, started: float) -> None:
    try:
        exhausted = isinstance(exc, MaxConnectionsError) or (
            isinstance(exc, RedisConnectionError) and str(exc).lower().startswith(_EXHAUSTED_MESSAGES)
        )
        recorder.checkout_failed(exc, started, timed_out=exhausted)
    except Exception as error:
        recorder.internal_error(error)
