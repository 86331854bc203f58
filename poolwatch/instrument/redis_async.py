"""Instrumenting a redis-py asyncio pool (``redis.asyncio.ConnectionPool`` / ``BlockingConnectionPool``,
or a ``redis.asyncio.Redis`` client's).

``get_connection()`` and ``release()`` (coroutines) are shadowed by hooks set as instance
attributes, each calling the pool class's own method looked up when it runs: waits (connecting
included, as redis-py connects inside ``get_connection()``), uses, checkouts, pending requests,
exhaustion ("Too many connections", or "No connection available." after a blocking pool's timeout)
counted as timeouts, and connect errors by reason. ``make_connection()`` likewise, to time each new
connection's connects as the sync adapter does (from the socket to the end of the handshake: a
``_connect`` attribute on the connection awaiting its class's ``_connect``, and redis-py's connect
callback, run after a successful handshake); connections already there are timed from their next
reconnect. The asyncio pool holds its connections in use
weakly (a connection the application drops is collected), so poolwatch's ledger holds them by weak
reference too. Called without arguments, the ``get_connection()`` hook awaits the method under
redis-py's ``deprecated_args`` wrapper, in the wrapper's place. Sizes are read from the pool's lists
of free and in-use connections, by redis.py's ``async_pool_sizes()``: every private name of
redis-py poolwatch reads is read there.
"""

from __future__ import annotations

import os
import time
import weakref
from _thread import get_ident
from pathlib import Path
from sys import _getframe as getframe
from typing import TYPE_CHECKING, Any, Final

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import (
    Base,
    async_checkout_hooks,
    check_threshold,
    failed,
    new_recorder,
    register,
    shadow,
    undone_on_failure,
)
from poolwatch.instrument.holder import current as current_holder
from poolwatch.instrument.holder import named as named_holders
from poolwatch.instrument.recorder import Ledger
from poolwatch.instrument.redis import (
    ASYNC_POOL_LISTS,
    async_pool_connections,
    async_pool_sizes,
    time_async_connects,
    watching_make_connection,
)
from poolwatch.serverlabel import redis_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.recorder import Recorder

_LIBRARY_DIR: Final = str(Path(redis.__file__).parent) + os.sep
_EXHAUSTED_MESSAGES: Final = ("no connection available", "too many connections")
_HOOKED: Final = ("get_connection", "release", "make_connection")
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
        # connection -> recorder-clock time its socket step started (a connect under way). The
        # pool's connections are used from its event loop only.
        self._starts: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def watch(self, connection: Any) -> None:
        """Time ``connection``'s connects from now on (a connection of this pool)."""
        time_async_connects(connection, self._started, self._on_connect, self.recorder.internal_error)

    def _started(self, connection: Any) -> None:
        self._starts[connection] = self.recorder.clock()

    def _on_connect(self, connection: Any) -> None:
        """redis-py's connect callback: the handshake succeeded (every connect and reconnect)."""
        try:
            started = self._starts.pop(connection, None)
            if started is not None:
                self.recorder.connected(self.recorder.clock() - started)
        except Exception as exc:
            self.recorder.internal_error(exc)

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

    register(
        registry,
        instrumentation,
        undone_on_failure(pool, _HOOKED, lambda: _hook(pool, recorder, instrumentation)),
    )
    return instrumentation


def _hook(
    pool: redis.asyncio.ConnectionPool, recorder: Recorder, instrumentation: AsyncRedisInstrumentation
) -> None:
    ledger = Ledger()
    ref: Callable[[], Any] = weakref.ref(pool)
    if type(pool).get_connection in _OWN_GETS and type(pool).release in _OWN_RELEASES:
        get, put = _checkout_hooks(ref, recorder, ledger)
    else:  # a class of the application's with methods of its own: any signature, one coroutine more
        get, put = async_checkout_hooks(
            "get_connection",
            "release",
            ref,
            recorder,
            ledger,
            exhausted=_exhausted,
            # The ledger key: the same weak reference object for a connection while it is alive
            # (CPython shares a callback-less one); a dropped connection's stays there as a leak.
            key=weakref.ref,
            library_dir=_LIBRARY_DIR,
            put_is_async=True,
        )

    make_connection = watching_make_connection(ref, recorder, instrumentation.watch)
    get.__doc__ = type(pool).get_connection.__doc__
    put.__doc__ = type(pool).release.__doc__
    make_connection.__doc__ = type(pool).make_connection.__doc__
    setattr(get, ATTACHED, ledger)
    shadow(pool, {"get_connection": get, "release": put, "make_connection": make_connection})
    recorder.adopt(ledger)
    try:
        for connection in async_pool_connections(pool):  # opened before: timed from their next reconnect
            instrumentation.watch(connection)
    except Exception as exc:
        recorder.internal_error(exc)


def _get_bodies() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """For ``ConnectionPool`` and ``BlockingConnectionPool``: the class's own ``get_connection``, and
    the coroutine function a hook called without arguments awaits in its place.

    Since 5.3 redis-py wraps ``get_connection`` in ``deprecated_args``, whose wrapper only warns of
    arguments given and then awaits the method it wraps (``__wrapped__``, set by ``functools.wraps``):
    called with none, it is a coroutine and an argument dict per checkout for nothing. Any other
    wrapper, or none (before 5.3), is awaited as it is.
    """
    pools = (redis.asyncio.ConnectionPool, redis.asyncio.BlockingConnectionPool)
    own = []
    for pool in pools:
        method = pool.get_connection
        wrapped = getattr(method, "__wrapped__", None)
        code = getattr(method, "__code__", None)
        name = getattr(code, "co_qualname", "")  # 3.11+; on 3.10 the wrapper is awaited
        own.append(
            (method, wrapped if wrapped is not None and name.startswith("deprecated_args.") else method)
        )
    return own[0], own[1]


(_PLAIN_GET, _PLAIN_BODY), (_BLOCKING_GET, _BLOCKING_BODY) = _get_bodies()
_OWN_GETS: Final = (_PLAIN_GET, _BLOCKING_GET)
_OWN_RELEASES: Final = (redis.asyncio.ConnectionPool.release, redis.asyncio.BlockingConnectionPool.release)


def _checkout_hooks(  # noqa: C901, PLR0915 - unrolled on purpose: every bytecode is paid per cycle
    ref: Callable[[], Any], recorder: Recorder, ledger: Ledger
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``get_connection`` / ``release`` hooks for a pool with redis-py's own methods.

    They take redis-py's own arguments (no ``*args, **kwargs`` to forward). The ``get_connection``
    hook, called without arguments, awaits the method under redis-py's ``deprecated_args`` wrapper in
    the wrapper's place: no coroutine of its own in the cycle. The ``release`` hook stays a
    coroutine around ``release()``, whose body is redis-py's own work. A class whose method was
    patched since gets that method awaited (looked up on the class at each call).
    """
    # Only what the usual path touches is a closure variable (each is copied into the hook's frame
    # on every call); the rare paths (a failure, a known leak) reach it through ``recorder``.
    clock = recorder.clock
    count = next
    requested = recorder.requested.counter
    handed = recorder.handed.counter
    wait = recorder.waits.append
    use = recorder.uses.append
    checked_out = ledger.checked_out
    take = checked_out.pop
    origins = ledger.origins
    holders = ledger.holders
    holder_now = current_holder
    holder_named = named_holders
    leaked = recorder.leaked
    threshold = recorder.leak_threshold or 0.0
    frame = getframe
    ident = get_ident
    weak = weakref.ref
    library_dir = _LIBRARY_DIR
    # The code of the last caller found outside the library: the same call site again needs no
    # look at its file (``str.startswith`` is ~1,000 instructions: it parses its arguments).
    outside: list[object] = [None]
    plain_get, plain_body = _PLAIN_GET, _PLAIN_BODY
    blocking_get, blocking_body = _BLOCKING_GET, _BLOCKING_BODY

    async def get_connection(command_name: Any = None, *keys: Any, **options: Any) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            method = type(this).get_connection
            if command_name is not None or keys or options:  # deprecated arguments: the wrapper warns
                connection = await method(this, command_name, *keys, **options)
            elif method is plain_get:
                connection = await plain_body(this)
            elif method is blocking_get:
                connection = await blocking_body(this)
            else:
                connection = await method(this)
        except BaseException as exc:
            failed(recorder, exc, start, _exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection.__weakref__ or weak(connection)
            checked_out[held] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[held] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    async def get_connection_tracking_leaks(command_name: Any = None, *keys: Any, **options: Any) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            method = type(this).get_connection
            if command_name is not None or keys or options:
                connection = await method(this, command_name, *keys, **options)
            elif method is plain_get:
                connection = await plain_body(this)
            elif method is blocking_get:
                connection = await blocking_body(this)
            else:
                connection = await method(this)
        except BaseException as exc:
            failed(recorder, exc, start, _exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection.__weakref__ or weak(connection)
            # capture_origin_outside(), inlined: redis-py's client calls get_connection() itself.
            caller = frame(1)
            code = caller.f_code
            if code is not outside[0]:
                # The file first: reading f_back builds the caller's caller's frame object.
                while code.co_filename.startswith(library_dir):
                    if caller.f_back is None:
                        break
                    caller = caller.f_back
                    code = caller.f_code
                else:
                    outside[0] = code
            origins[held] = (code, caller.f_lasti, ident())
            checked_out[held] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[held] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    async def release(connection: Any) -> Any:
        try:
            # The reference the connection was filed under (no new one).
            held = connection.__weakref__
            started = take(held, None)  # None: not handed out through this hook
            if started is not None:
                if holders and (holder := holders.pop(held, None)) is not None:
                    recorder.by_holder.hold((holder, clock() - started))
                else:
                    use(clock() - started)
        except Exception as exc:
            recorder.internal_error(exc)
        this = ref()
        return await type(this).release(this, connection)

    async def release_tracking_leaks(connection: Any) -> Any:
        try:
            held = connection.__weakref__
            started = take(held, None)
            if started is not None:
                duration = clock() - started
                holder = holders.pop(held, None) if holders else None
                if holder is None:
                    use(duration)
                else:
                    recorder.by_holder.hold((holder, duration))
                origin = origins.pop(held, None)
                if leaked or duration > threshold:  # known leaks, or one no scrape saw out
                    recorder.returned(held, duration, holder, origin)
        except Exception as exc:
            recorder.internal_error(exc)
        this = ref()
        return await type(this).release(this, connection)

    if recorder.leak_threshold is None:
        return get_connection, release
    return get_connection_tracking_leaks, release_tracking_leaks
