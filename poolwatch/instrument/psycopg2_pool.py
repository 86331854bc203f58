"""Instrumenting a psycopg2 pool (``psycopg2.pool.SimpleConnectionPool`` / ``ThreadedConnectionPool``).

``getconn()`` and ``putconn()`` are shadowed by hooks set as instance attributes (each calls the
pool class's own method, looked up when it runs), for waits, uses, checkouts, pending requests and
leaks; a ``PoolError`` saying "connection pool exhausted" (psycopg2's pools never wait) is counted as
a timeout. ``_connect()`` likewise, for connect times and connect errors by reason, and
``closeall()``. Sizes are read from the pool's lists of idle and handed-out connections and its
``minconn`` / ``maxconn``. Closes: ``putconn(close=True)`` and ``closeall()`` are counted by their
hooks; the connections psycopg2 closes on return by itself (beyond ``minconn`` idle, or broken) are
worked out at scrape time, as those opened that are gone. Every private name of psycopg2 poolwatch
reads is read in this module.
"""

from __future__ import annotations

import os
import time
import weakref
from _thread import get_ident
from pathlib import Path
from sys import _getframe as getframe
from typing import TYPE_CHECKING, Any, Final

import psycopg2.extensions
import psycopg2.pool

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import (
    Base,
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

_LIBRARY_DIR: Final = str(Path(psycopg2.__file__).parent) + os.sep
_HOOKED: Final = ("getconn", "putconn", "_connect", "closeall")
# The close reasons the hooks count; psycopg2's own closes on return are the rest ("overflow").
_COUNTED_CLOSES: Final = ("invalidated", "dispose")
_CLOSES: Final = ("overflow", *_COUNTED_CLOSES)
ATTACHED: Final = "_poolwatch"


def _exhausted(exc: BaseException) -> bool:
    return isinstance(exc, psycopg2.pool.PoolError) and "exhausted" in str(exc)


class Psycopg2PoolInstrumentation(Base):
    """The instrumentation of one psycopg2 pool."""

    def __init__(self, pool: psycopg2.pool.AbstractConnectionPool, name: str, recorder: Recorder) -> None:
        super().__init__(name, recorder)
        self._pool = weakref.ref(pool)
        recorder.min_idle = int(pool.minconn)
        # Every connection the pool has had: those it had when instrumented, and those it opened
        # since (counted by the connect hook once the pool has filed them, under the pool's lock).
        self.had = len(pool._pool) + len(pool._used)
        # The closes counted before this pool (counts_from: carried from the pool it replaces).
        self._carried = recorder.closes(_CLOSES)

    @property
    def pool(self) -> psycopg2.pool.AbstractConnectionPool | None:
        return self._pool()

    def state(self) -> PoolState | None:
        pool = self._pool()
        if pool is None:
            return None
        idle = len(pool._pool)
        used = len(pool._used)
        self._count_closes(pool)
        return PoolState(
            idle=idle, used=used, size=idle + used, max_connections=float(pool.maxconn), overflow=0
        )

    def _count_closes(self, pool: psycopg2.pool.AbstractConnectionPool) -> None:
        """The connections psycopg2 closed on return by itself: all this pool had that are gone,
        less the closes the hooks counted. Read under a ``ThreadedConnectionPool``'s lock, if free
        (never waited for: a connect may hold it for seconds), under which the hooks count theirs
        and a connection moves between the lists; when it is held, the next scrape counts."""
        lock = getattr(pool, "_lock", None)
        if lock is not None and not lock.acquire(blocking=False):
            return
        try:
            open_now = 0 if pool.closed else len(pool._pool) + len(pool._used)
            counted = self.recorder.closes(_CLOSES)
        finally:
            if lock is not None:
                lock.release()
        carried = self._carried
        by_hooks = sum(counted[reason] - carried[reason] for reason in _COUNTED_CLOSES)
        self.recorder.closed_at_least("overflow", carried["overflow"] + self.had - open_now - by_hooks)


def instrument_psycopg2_pool(
    pool: psycopg2.pool.AbstractConnectionPool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
    server: str | None = None,
) -> Psycopg2PoolInstrumentation:
    """Export the metrics of a psycopg2 pool on ``registry``.

    Checked before anything changes: a ``TypeError`` / ``ValueError`` leaves the pool as it was.
    """
    if not isinstance(pool, psycopg2.pool.AbstractConnectionPool):
        raise TypeError(f"poolwatch.instrument({name!r}): {type(pool).__name__} is not a psycopg2 pool")
    if getattr(getattr(pool, "getconn", None), ATTACHED, None) is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this pool is already instrumented")
    check_threshold("instrument", name, leak_threshold)
    missing = [attr for attr in ("_pool", "_used", "minconn", "maxconn") if not hasattr(pool, attr)]
    if missing or not callable(getattr(type(pool), "_connect", None)):
        raise TypeError(
            f"poolwatch.instrument({name!r}): {type(pool).__name__} lacks {missing or '_connect'}"
        )
    recorder = new_recorder(name, leak_threshold, clock, counts_from)
    instrumentation = Psycopg2PoolInstrumentation(pool, name, recorder)
    instrumentation.server = _server(pool) if server is None else server

    register(
        registry,
        instrumentation,
        undone_on_failure(pool, _HOOKED, lambda: _hook(pool, recorder, instrumentation)),
    )
    return instrumentation


def _server(pool: psycopg2.pool.AbstractConnectionPool) -> str:
    """The ``server`` label from the arguments the pool connects with (its DSN and keywords, as
    ``psycopg2.connect`` merges them); empty if they cannot be read."""
    try:
        dsn = pool._args[0] if pool._args else ""
        return pg_server(psycopg2.extensions.parse_dsn(psycopg2.extensions.make_dsn(dsn, **pool._kwargs)))
    except Exception:
        return ""


def _hook(
    pool: psycopg2.pool.AbstractConnectionPool,
    recorder: Recorder,
    instrumentation: Psycopg2PoolInstrumentation,
) -> None:
    ledger = Ledger()
    ref: Callable[[], Any] = weakref.ref(pool)
    if type(pool).getconn in _OWN_GETCONN and type(pool).putconn in _OWN_PUTCONN:
        get, put = _checkout_hooks(ref, recorder, ledger)
    else:  # a class of the application's with methods of its own: any signature, one frame more
        get, put = checkout_hooks(
            "getconn",
            "putconn",
            ref,
            recorder,
            ledger,
            exhausted=_exhausted,
            key=None,
            library_dir=_LIBRARY_DIR,
        )

    def class_connect(*args: Any, **kwargs: Any) -> Any:
        this = ref()
        connection = type(this)._connect(this, *args, **kwargs)
        # Once filed: a scrape meanwhile sees one more open than opened, never one fewer.
        instrumentation.had += 1
        return connection

    def closeall() -> None:
        this = ref()
        if type(this).closeall is _THREADED_CLOSEALL:
            # ThreadedConnectionPool.closeall, without its frame: the closes counted under its lock.
            this._lock.acquire()
            try:
                open_now = 0 if this.closed else len(this._pool) + len(this._used)
                this._closeall()
                recorder.close("dispose", open_now)
            finally:
                this._lock.release()
            return
        open_now = 0 if this.closed else len(this._pool) + len(this._used)
        type(this).closeall(this)
        recorder.close("dispose", open_now)

    # The pool connects inside getconn() only, whose hook counts a failure: the connect hook times.
    connect = timed_connect(recorder, class_connect, count_failures=False)
    get.__doc__ = type(pool).getconn.__doc__
    put.__doc__ = type(pool).putconn.__doc__
    closeall.__doc__ = type(pool).closeall.__doc__
    setattr(get, ATTACHED, ledger)
    shadow(pool, {"getconn": get, "putconn": put, "_connect": connect, "closeall": closeall})
    recorder.adopt(ledger)


# psycopg2's own getconn / putconn (ThreadedConnectionPool's, and SimpleConnectionPool's, which are
# AbstractConnectionPool's unlocked ones): their signatures are known, so the hooks take the same
# arguments and no ``*args, **kwargs`` (a dict built on every call).
_THREADED_GET: Final = psycopg2.pool.ThreadedConnectionPool.getconn
_THREADED_PUT: Final = psycopg2.pool.ThreadedConnectionPool.putconn
_THREADED_CLOSEALL: Final = psycopg2.pool.ThreadedConnectionPool.closeall
_OWN_GETCONN: Final = (_THREADED_GET, psycopg2.pool.AbstractConnectionPool._getconn)
_OWN_PUTCONN: Final = (_THREADED_PUT, psycopg2.pool.AbstractConnectionPool._putconn)


def _checkout_hooks(  # noqa: C901, PLR0915 - unrolled on purpose: every bytecode is paid per cycle
    ref: Callable[[], Any], recorder: Recorder, ledger: Ledger
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``getconn`` / ``putconn`` hooks for a pool with psycopg2's own methods.

    psycopg2's cycle is ~11,000 instructions, so the hooks are held to what they record. Each is the
    only frame it adds: ``ThreadedConnectionPool``'s lock-and-delegate body is done in the hook
    itself (its ``getconn`` / ``putconn`` frame is not entered), as SQLAlchemy's hook does with
    ``Pool.connect``; a class whose method was patched since, or ``SimpleConnectionPool``, gets its
    method called (looked up on the class at each call). Everything the hooks touch is a local of
    this closure, bound once; the leak and no-leak variants of ``getconn`` are separate functions.
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
    threaded_get = _THREADED_GET
    threaded_put = _THREADED_PUT

    def getconn(key: Any = None) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            if type(this).getconn is threaded_get:
                # ThreadedConnectionPool.getconn, without its frame.
                this._lock.acquire()
                try:
                    connection = this._getconn(key)
                finally:
                    this._lock.release()
            else:
                connection = type(this).getconn(this, key)
        except BaseException as exc:
            failed(recorder, exc, start, _exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            checked_out[connection] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[connection] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    def getconn_tracking_leaks(key: Any = None) -> Any:
        start = clock()
        count(requested)
        this = ref()
        try:
            if type(this).getconn is threaded_get:
                this._lock.acquire()
                try:
                    connection = this._getconn(key)
                finally:
                    this._lock.release()
            else:
                connection = type(this).getconn(this, key)
        except BaseException as exc:
            failed(recorder, exc, start, _exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            # The caller's frame, inlined (psycopg2 never calls its pool's getconn itself: no
            # library frames to walk past, as capture_origin_outside() does for other libraries).
            caller = frame(1)
            origins[connection] = (caller.f_code, caller.f_lasti, ident())
            checked_out[connection] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[connection] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    def putconn(conn: Any = None, key: Any = None, close: bool = False) -> Any:
        try:
            started = take(conn, None)  # None: not handed out through this hook
            if started is not None:
                if holders and (holder := holders.pop(conn, None)) is not None:
                    recorder.by_holder.hold((holder, clock() - started))
                else:
                    use(clock() - started)
        except Exception as exc:
            recorder.internal_error(exc)
        this = ref()
        if type(this).putconn is threaded_put:
            # ThreadedConnectionPool.putconn, without its frame.
            this._lock.acquire()
            try:
                this._putconn(conn, key, close)
                if close:  # the caller's close, counted under the lock (psycopg2's own: scraped)
                    recorder.close("invalidated")
            finally:
                this._lock.release()
            return None
        result = type(this).putconn(this, conn, key, close)
        if close:
            recorder.close("invalidated")
        return result

    def putconn_tracking_leaks(conn: Any = None, key: Any = None, close: bool = False) -> Any:
        try:
            started = take(conn, None)
            if started is not None:
                duration = clock() - started
                holder = holders.pop(conn, None) if holders else None
                if holder is None:
                    use(duration)
                else:
                    recorder.by_holder.hold((holder, duration))
                origin = origins.pop(conn, None)
                if leaked or duration > threshold:  # known leaks, or one no scrape saw out
                    recorder.returned(conn, duration, holder, origin)
        except Exception as exc:
            recorder.internal_error(exc)
        this = ref()
        if type(this).putconn is threaded_put:
            this._lock.acquire()
            try:
                this._putconn(conn, key, close)
                if close:
                    recorder.close("invalidated")
            finally:
                this._lock.release()
            return None
        result = type(this).putconn(this, conn, key, close)
        if close:
            recorder.close("invalidated")
        return result

    if recorder.leak_threshold is None:
        return getconn, putconn
    return getconn_tracking_leaks, putconn_tracking_leaks
