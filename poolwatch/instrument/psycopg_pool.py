"""Instrumenting a psycopg 3 pool (``psycopg_pool.ConnectionPool`` / ``AsyncConnectionPool``).

Sizes come from the pool's public ``get_stats()`` when Prometheus scrapes (never ``pop_stats()``,
which resets the counters others read; a counter still at 0 may be missing from it). ``getconn()``
and ``putconn()`` (which ``connection()`` calls too) are shadowed by hooks set as instance
attributes, for the wait and use histograms, checkouts, pending requests, timeouts (``PoolTimeout``,
``TooManyRequests``) and leaks; ``_connect()`` likewise, for connect times and connect errors by
reason (the pool connects on its own workers, so a caller only ever sees a timeout), and
``_close_connection()``, for closes by reason (told by the pool's method that closes: its idle
shrink, an expired connection, a failed reset, a drain, the pool closing). The pool's
``configure`` / ``check`` / ``reset`` callbacks stay the application's. The connections handed out
are held in the ledger by weak reference: the pool keeps none of them, and neither does poolwatch.
While a pool's class has psycopg_pool's own ``getconn`` / ``putconn``, the hooks do those methods'
small bodies themselves (one frame, or coroutine, fewer per call), which read more of its private
names. A leak's origin is the application's line: frames of psycopg_pool and contextlib's entry into
``connection()`` are passed over. Every private name of
psycopg_pool poolwatch reads is read in this module.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from _thread import get_ident
from pathlib import Path
from sys import _getframe as getframe
from typing import TYPE_CHECKING, Any, Final

import psycopg.conninfo
import psycopg_pool
import psycopg_pool.pool_async

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import (
    Base,
    async_checkout_hooks,
    async_timed_connect,
    check_threshold,
    checkout_hooks,
    failed,
    new_recorder,
    register,
    shadow,
    timed_connect,
    undone_on_failure,
)
from poolwatch.instrument.holder import current as current_holder
from poolwatch.instrument.holder import named as named_holders
from poolwatch.instrument.recorder import Ledger
from poolwatch.serverlabel import pg_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.recorder import Recorder

AnyPool = psycopg_pool.ConnectionPool[Any] | psycopg_pool.AsyncConnectionPool[Any]

_LIBRARY_DIR: Final = str(Path(psycopg_pool.__file__).parent) + os.sep
_HOOKED: Final = ("getconn", "putconn", "_connect", "_close_connection")
# Why psycopg_pool closed a connection, by the method of the pool that called _close_connection()
# (the same names in the thread and the asyncio pools). Connections found broken are dropped without
# it: psycopg_pool counts those in its connections_lost and returns_bad stats.
CLOSED_BY: Final = {
    "_shrink_pool": "idle_timeout",  # idle past max_idle, above min_size
    "_return_connection": "max_lifetime",  # expired (past max_lifetime, or drained) on its return
    "check": "max_lifetime",  # expired, found by check()
    "drain": "recycled",
    "_reset_connection": "error",  # returned mid-operation, or its rollback or reset failed
    "close": "dispose",
    "_maybe_close_connection": "dispose",  # returned to a closed pool
    "_add_to_pool": "dispose",  # opened as the pool closed
}
# Where a NullConnectionPool closes what it is given back while open, nobody waiting for it.
_RETURNED: Final = ("_maybe_close_connection", "_add_to_pool")
# The attribute of the getconn hook that marks the pool as instrumented.
ATTACHED: Final = "_poolwatch"


def _exhausted(exc: BaseException) -> bool:
    # TooManyRequests: the pool's max_waiting queue is full, an exhaustion like a timeout.
    return isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests)


class PsycopgPoolInstrumentation(Base):
    """The instrumentation of one psycopg_pool pool."""

    def __init__(self, pool: AnyPool, name: str, recorder: Recorder) -> None:
        super().__init__(name, recorder)
        self._pool = weakref.ref(pool)

    @property
    def pool(self) -> AnyPool | None:
        return self._pool()

    def state(self) -> PoolState | None:
        pool = self._pool()
        if pool is None:
            return None
        stats = pool.get_stats()  # never pop_stats(): it resets what others read
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        self.recorder.min_idle = stats.get("pool_min", 0)
        # The pool's size counts the connections its workers are opening (or replacing) too: used
        # is what was handed out and not yet returned, at most what is neither idle nor being opened.
        out = len(self.recorder.ledger.checked_out)
        return PoolState(
            idle=idle,
            used=max(0, min(size - idle, out)),
            size=size,
            max_connections=float(stats.get("pool_max", 0)),
            overflow=0,
        )


def instrument_psycopg_pool(
    pool: AnyPool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
    server: str | None = None,
) -> PsycopgPoolInstrumentation:
    """Export the metrics of a psycopg_pool pool (sync or async) on ``registry``.

    Checked before anything changes: a ``TypeError`` / ``ValueError`` leaves the pool as it was.
    """
    if not isinstance(pool, psycopg_pool.ConnectionPool | psycopg_pool.AsyncConnectionPool):
        raise TypeError(f"poolwatch.instrument({name!r}): {type(pool).__name__} is not a psycopg_pool pool")
    if getattr(getattr(pool, "getconn", None), ATTACHED, None) is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this pool is already instrumented")
    check_threshold("instrument", name, leak_threshold)
    if not callable(getattr(type(pool), "_connect", None)):
        raise TypeError(f"poolwatch.instrument({name!r}): {type(pool).__name__} has no _connect()")
    recorder = new_recorder(name, leak_threshold, clock, counts_from)
    instrumentation = PsycopgPoolInstrumentation(pool, name, recorder)
    instrumentation.server = _server(pool) if server is None else server

    register(registry, instrumentation, undone_on_failure(pool, _HOOKED, lambda: _hook(pool, recorder)))
    return instrumentation


def _server(pool: AnyPool) -> str:
    """The ``server`` label from the pool's ``conninfo`` and ``kwargs`` (as psycopg merges them);
    empty if they cannot be read, or are functions the pool calls at each connect."""
    conninfo, kwargs = pool.conninfo, pool.kwargs or {}
    if not isinstance(conninfo, str) or not isinstance(kwargs, dict):
        return ""
    try:
        return pg_server(psycopg.conninfo.conninfo_to_dict(conninfo, **kwargs))
    except Exception:
        return ""


def _hook(pool: AnyPool, recorder: Recorder) -> None:
    ledger = Ledger()
    ref: Callable[[], Any] = weakref.ref(pool)
    is_async = isinstance(pool, psycopg_pool.AsyncConnectionPool)
    get: Callable[..., Any]
    put: Callable[..., Any]
    if is_async:
        if (
            _KNOWN_ASYNC_BODIES
            and type(pool).getconn is _ASYNC_GETCONN
            and type(pool).putconn is _ASYNC_PUTCONN
        ):
            get, put = _async_checkout_hooks(ref, recorder, ledger)
        else:  # a class of the application's with methods of its own: any signature, one frame more
            get, put = async_checkout_hooks(
                "getconn",
                "putconn",
                ref,
                recorder,
                ledger,
                exhausted=_exhausted,
                # The ledger key: the same weak reference object for a connection while it is alive
                # (CPython shares a callback-less one); a dropped connection's stays there as a leak.
                key=weakref.ref,
                library_dir=_LIBRARY_DIR,
                put_param="conn",
                put_is_async=True,
            )

        async def class_connect(*args: Any, **kwargs: Any) -> Any:
            this = ref()
            return await type(this)._connect(this, *args, **kwargs)

        connect = async_timed_connect(recorder, class_connect)
    elif _KNOWN_BODIES and type(pool).getconn is _GETCONN and type(pool).putconn is _PUTCONN:
        get, put = _sync_checkout_hooks(ref, recorder, ledger)
        connect = timed_connect(recorder, _class_connect(ref))
    else:  # a class of the application's with methods of its own: any signature, one frame more
        get, put = checkout_hooks(
            "getconn",
            "putconn",
            ref,
            recorder,
            ledger,
            exhausted=_exhausted,
            # The ledger key: the same weak reference object for a connection while it is alive
            # (CPython shares a callback-less one); a dropped connection's stays there as a leak.
            key=weakref.ref,
            library_dir=_LIBRARY_DIR,
            put_param="conn",
        )
        connect = timed_connect(recorder, _class_connect(ref))
    get.__doc__ = type(pool).getconn.__doc__
    put.__doc__ = type(pool).putconn.__doc__
    setattr(get, ATTACHED, ledger)
    hooks = {"getconn": get, "putconn": put, "_connect": connect}
    if callable(getattr(type(pool), "_close_connection", None)):
        hooks["_close_connection"] = _closing(ref, recorder, is_async=is_async)
    shadow(pool, hooks)
    recorder.adopt(ledger)


def _closing(ref: Callable[[], Any], recorder: Recorder, *, is_async: bool) -> Callable[..., Any]:
    """A ``_close_connection`` hook: the class's method, then the close counted by the reason its
    caller tells (``CLOSED_BY``; another caller's close counts as an error)."""

    def reason(conn: Any) -> str | None:
        try:
            return _close_reason(ref(), conn, getframe(2).f_code.co_name)  # the hook's caller's
        except Exception as exc:
            recorder.internal_error(exc)
            return "error"

    if is_async:

        async def close_connection_async(conn: Any) -> None:
            why = reason(conn)
            this = ref()
            await type(this)._close_connection(this, conn)
            if why is not None:
                recorder.close(why)

        return close_connection_async

    def close_connection(conn: Any) -> None:
        why = reason(conn)
        this = ref()
        type(this)._close_connection(this, conn)
        if why is not None:
            recorder.close(why)

    return close_connection


def _close_reason(pool: Any, conn: Any, caller: str) -> str | None:
    """Why ``pool`` closes ``conn``, called from its method ``caller``; None if ``conn`` is closed
    already (psycopg_pool closes a connection returned mid-operation, then runs its ``reset`` on
    it, which fails: a second close of the same connection)."""
    if conn.closed:
        return None
    if caller in _RETURNED and not pool._closed:
        return "overflow"  # a NullConnectionPool's: nobody was waiting for it
    if caller == "_return_connection":  # expired, or (psycopg_pool 3.3) out during a drain()
        created, drained = getattr(conn, "_created_at", None), getattr(pool, "_drained_at", None)
        if created is not None and drained is not None and created <= drained:
            return "recycled"
    return CLOSED_BY.get(caller, "error")


def _class_connect(ref: Callable[[], Any]) -> Callable[..., Any]:
    """The pool class's ``_connect``, looked up at each call (a later patch of the class is called)."""

    def class_connect(*args: Any, **kwargs: Any) -> Any:
        this = ref()
        return type(this)._connect(this, *args, **kwargs)

    return class_connect


# The pools' own getconn / putconn, whose bodies the hooks do themselves if these are the names they
# read (the hooks' copies are of psycopg_pool 3.2 and 3.3's; another body is called as it is), and
# what those bodies read of the library's modules. The sync and async bodies read the same names.
_GETCONN: Final = psycopg_pool.ConnectionPool.getconn
_PUTCONN: Final = psycopg_pool.ConnectionPool.putconn
_ASYNC_GETCONN: Final = psycopg_pool.AsyncConnectionPool.getconn
_ASYNC_PUTCONN: Final = psycopg_pool.AsyncConnectionPool.putconn
_GETCONN_READS: Final = (
    "timeout",
    "monotonic",
    "logger",
    "info",
    "name",
    "_stats",
    "_REQUESTS_NUM",
    "_check_open_getconn",
    "_getconn_with_check_loop",
    "PoolTimeout",
)
_PUTCONN_READS: Final = (
    "_check_pool_putconn",
    "logger",
    "info",
    "name",
    "_maybe_close_connection",
    "_putconn",
)


def _known_bodies(get: Callable[..., Any], put: Callable[..., Any]) -> bool:
    return get.__code__.co_names == _GETCONN_READS and put.__code__.co_names == _PUTCONN_READS


_KNOWN_BODIES: Final = _known_bodies(_GETCONN, _PUTCONN)
_KNOWN_ASYNC_BODIES: Final = _known_bodies(_ASYNC_GETCONN, _ASYNC_PUTCONN)
_LOGGER: Final = psycopg_pool.pool_async.logger  # "psycopg.pool", as psycopg_pool.pool's
# What a checkout passes through besides psycopg_pool's own code: ``with pool.connection()`` enters
# the library's generator through contextlib, whose frame is not where the application checked out.
_ENTER: Final = contextlib._GeneratorContextManager.__enter__.__code__
_AENTER: Final = contextlib._AsyncGeneratorContextManager.__aenter__.__code__


def _sync_checkout_hooks(  # noqa: C901, PLR0915 - unrolled on purpose: every bytecode is paid per cycle
    ref: Callable[[], Any], recorder: Recorder, ledger: Ledger
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``getconn`` / ``putconn`` hooks for a ``ConnectionPool`` with psycopg_pool's own methods: as
    ``_async_checkout_hooks``, each does the small body of the library's method in its place (the
    pool checks, the log line, the request count), unless the class's method was patched since, which
    is then called. One frame fewer per call, and the parameters by the library's names and defaults
    (no argument tuple and dict to forward)."""
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
    enter = _ENTER
    outside: list[object] = [None]  # the code of the last caller found outside the library
    own_get = _GETCONN
    own_put = _PUTCONN
    monotonic = time.monotonic
    logger = _LOGGER
    pool_timeout = psycopg_pool.PoolTimeout

    def getconn(timeout: float | None = None) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            if type(this).getconn is own_get:
                # ConnectionPool.getconn, without its frame.
                if timeout is None:
                    timeout = this.timeout
                deadline = monotonic() + timeout
                logger.info("connection requested from %r", this.name)
                this._stats[this._REQUESTS_NUM] += 1
                this._check_open_getconn()
                try:
                    connection = this._getconn_with_check_loop(deadline)
                except pool_timeout:
                    # The timeout the caller gave, not the last attempt's (as the library does).
                    raise pool_timeout(f"couldn't get a connection after {timeout:.2f} sec") from None
            else:
                connection = type(this).getconn(this, timeout)
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

    def getconn_tracking_leaks(timeout: float | None = None) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            if type(this).getconn is own_get:
                if timeout is None:
                    timeout = this.timeout
                deadline = monotonic() + timeout
                logger.info("connection requested from %r", this.name)
                this._stats[this._REQUESTS_NUM] += 1
                this._check_open_getconn()
                try:
                    connection = this._getconn_with_check_loop(deadline)
                except pool_timeout:
                    raise pool_timeout(f"couldn't get a connection after {timeout:.2f} sec") from None
            else:
                connection = type(this).getconn(this, timeout)
        except BaseException as exc:
            failed(recorder, exc, start, _exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection.__weakref__ or weak(connection)
            caller = frame(1)
            code = caller.f_code
            if code is not outside[0]:
                while code is enter or code.co_filename.startswith(library_dir):
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

    def putconn(conn: Any) -> None:
        try:
            held = conn.__weakref__  # the reference the connection was filed under (no new one)
            started = take(held, None)  # None: not handed out through this hook
            if started is not None:
                if holders and (holder := holders.pop(held, None)) is not None:
                    recorder.by_holder.hold((holder, clock() - started))
                else:
                    use(clock() - started)
        except Exception as exc:
            recorder.internal_error(exc)
        this = ref()
        if type(this).putconn is own_put:
            # ConnectionPool.putconn, without its frame.
            this._check_pool_putconn(conn)
            logger.info("returning connection to %r", this.name)
            if this._maybe_close_connection(conn):
                return
            this._putconn(conn, from_getconn=False)
            return
        type(this).putconn(this, conn)

    def putconn_tracking_leaks(conn: Any) -> None:
        try:
            held = conn.__weakref__
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
        if type(this).putconn is own_put:
            this._check_pool_putconn(conn)
            logger.info("returning connection to %r", this.name)
            if this._maybe_close_connection(conn):
                return
            this._putconn(conn, from_getconn=False)
            return
        type(this).putconn(this, conn)

    if recorder.leak_threshold is None:
        return getconn, putconn
    return getconn_tracking_leaks, putconn_tracking_leaks


def _async_checkout_hooks(  # noqa: C901, PLR0915 - unrolled on purpose: every bytecode is paid per cycle
    ref: Callable[[], Any], recorder: Recorder, ledger: Ledger
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``getconn`` / ``putconn`` hooks for an ``AsyncConnectionPool`` with psycopg_pool's own methods.

    Each hook is a coroutine in place of the library's, not around it: ``getconn`` and ``putconn``
    only check the pool, log and count a request, then await the method that does the work
    (``_getconn_with_check_loop``, ``_putconn``); the hooks do that themselves, unless the class's
    method was patched since (looked up on the class at each call), which is then awaited. One
    coroutine, frame and ``await`` fewer per call than awaiting the library's method.
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
    aenter = _AENTER
    # The code of the last caller found outside the library: the same call site again needs no
    # look at its file (``str.startswith`` is ~1,000 instructions: it parses its arguments).
    outside: list[object] = [None]
    own_get = _ASYNC_GETCONN
    own_put = _ASYNC_PUTCONN
    monotonic = time.monotonic  # the library's deadline clock (its module imports it)
    logger = _LOGGER
    pool_timeout = psycopg_pool.PoolTimeout

    async def getconn(timeout: float | None = None) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            if type(this).getconn is own_get:
                # AsyncConnectionPool.getconn, without its coroutine.
                if timeout is None:
                    timeout = this.timeout
                deadline = monotonic() + timeout
                logger.info("connection requested from %r", this.name)
                this._stats[this._REQUESTS_NUM] += 1
                this._check_open_getconn()
                try:
                    connection = await this._getconn_with_check_loop(deadline)
                except pool_timeout:
                    # The timeout the caller gave, not the last attempt's (as the library does).
                    raise pool_timeout(f"couldn't get a connection after {timeout:.2f} sec") from None
            else:
                connection = await type(this).getconn(this, timeout)
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

    async def getconn_tracking_leaks(timeout: float | None = None) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            if type(this).getconn is own_get:
                if timeout is None:
                    timeout = this.timeout
                deadline = monotonic() + timeout
                logger.info("connection requested from %r", this.name)
                this._stats[this._REQUESTS_NUM] += 1
                this._check_open_getconn()
                try:
                    connection = await this._getconn_with_check_loop(deadline)
                except pool_timeout:
                    raise pool_timeout(f"couldn't get a connection after {timeout:.2f} sec") from None
            else:
                connection = await type(this).getconn(this, timeout)
        except BaseException as exc:
            failed(recorder, exc, start, _exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection.__weakref__ or weak(connection)
            # capture_origin_outside(), inlined: the pool's connection() calls getconn() itself.
            caller = frame(1)
            code = caller.f_code
            if code is not outside[0]:
                # Before the file: reading f_back builds the caller's caller's frame object.
                while code is aenter or code.co_filename.startswith(library_dir):
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

    async def putconn(conn: Any) -> None:
        try:
            # The reference the connection was filed under (no new one).
            held = conn.__weakref__
            started = take(held, None)  # None: not handed out through this hook
            if started is not None:
                if holders and (holder := holders.pop(held, None)) is not None:
                    recorder.by_holder.hold((holder, clock() - started))
                else:
                    use(clock() - started)
        except Exception as exc:
            recorder.internal_error(exc)
        this = ref()
        if type(this).putconn is own_put:
            # AsyncConnectionPool.putconn, without its coroutine.
            this._check_pool_putconn(conn)
            logger.info("returning connection to %r", this.name)
            if await this._maybe_close_connection(conn):
                return
            await this._putconn(conn, from_getconn=False)
            return
        await type(this).putconn(this, conn)

    async def putconn_tracking_leaks(conn: Any) -> None:
        try:
            held = conn.__weakref__
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
        if type(this).putconn is own_put:
            this._check_pool_putconn(conn)
            logger.info("returning connection to %r", this.name)
            if await this._maybe_close_connection(conn):
                return
            await this._putconn(conn, from_getconn=False)
            return
        await type(this).putconn(this, conn)

    if recorder.leak_threshold is None:
        return getconn, putconn
    return getconn_tracking_leaks, putconn_tracking_leaks
