"""Instrumenting a SQLAlchemy QueuePool (an engine's, or one built directly): hooks, close reasons, sizes.

Wait time runs from the request to the connection handed out, but SQLAlchemy has no "checkout
requested" event (``checkout`` fires after queueing, connecting and pre-ping), and dispatching its
``checkin`` event alone costs ~1 us of a ~15 us cycle. So the pool's ``connect()`` and
``_return_conn()`` are shadowed by hooks set as instance attributes on the pool (its class, and so
``type(pool)``, stays what it was). Each hook does what the method it shadows does, one call into
SQLAlchemy looked up when the hook runs, so no frame is added to the cycle; if the pool's class
overrides that method, or it was patched since, the hook calls it instead: a later patch is
honoured. ``recreate()`` is hooked as well, so the pool ``engine.dispose()`` builds is hooked before
the engine uses it.

Rarer facts come from public pool events (connect, invalidate, close, detach), registered on the pool
and carried by SQLAlchemy to the pools it recreates. Per-connection facts (a lifetime jitter, why a
connection is being closed) live in poolwatch's own weak map, never in the application's
``Connection.info``. Every private name of SQLAlchemy poolwatch reads is read in this module, for
NullPool engines (sqlalchemy_nullpool.py) too: ``pool_internals()`` once per pool, and
``_connection_record`` / ``last_connect_time`` per connection (``record_of``, ``entry_of``,
``connected_at``), pinned by tests/unit/test_sqlalchemy_internals.py and test_private_names.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import weakref
from _thread import get_ident
from dataclasses import dataclass
from pathlib import Path
from sys import _getframe as getframe
from typing import TYPE_CHECKING, Any, Final, cast

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.pool.base import _ConnectionFairy

from poolwatch.instrument.collector import PoolState, collector_for
from poolwatch.instrument.holder import HOLDER_LIMIT, check_holder_limit
from poolwatch.instrument.holder import current as current_holder
from poolwatch.instrument.holder import named as named_holders
from poolwatch.instrument.recorder import MAX_JITTER, Ledger, Recorder

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable
    from types import FrameType

    from prometheus_client.registry import CollectorRegistry
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

# The application's frame, seen from the connect hook: hook < Engine.raw_connection <
# Connection.__init__ < Engine.connect < application.
CALLER_DEPTH: Final = 4
# Where SQLAlchemy's own code is (its files, the wrappers its decorators generate, and contextlib,
# through which `with engine.begin()` checks out): a frame at CALLER_DEPTH still in it (an ORM
# Session's checkout, through Session.connection() or execute()) is walked out of, to the application's.
LIBRARY_CODE: Final = (
    str(Path(sqlalchemy.__file__).parent) + os.sep,
    "<sqlalchemy generated",
    str(Path(contextlib.__file__)),
)
_FILES_KEPT: Final = 4096  # application file names remembered (each costs a str.startswith once)


def outside_library(caller: FrameType, application_files: set[str]) -> FrameType:
    """``caller`` if its code is the application's, else the first frame outside SQLAlchemy (an ORM
    Session checking out): the rare path of the checkout hook, which calls it only for a file name
    not yet in ``application_files``. File names found to be the application's are added there (up
    to ``_FILES_KEPT``), so the hook's usual path is one set lookup."""
    while caller.f_code.co_filename.startswith(LIBRARY_CODE) and caller.f_back is not None:
        caller = caller.f_back
    name = caller.f_code.co_filename
    if not name.startswith(LIBRARY_CODE) and len(application_files) < _FILES_KEPT:
        application_files.add(name)
    return caller


# The attribute of the pool's connect hook that holds what the hooks share (and marks the pool as
# instrumented): the pool's own __dict__ gets no key but the names of the methods it shadows.
ATTACHED: Final = "_poolwatch"
# The pool method a connection goes back through: private, shadowed by the checkin hooks of QueuePool
# and of NullPool (sqlalchemy_nullpool.py).
RETURN_CONN: Final = "_return_conn"
_HOOKED: Final = ("connect", RETURN_CONN, "dispose", "recreate")
_EVENTS: Final = ("connect", "invalidate", "soft_invalidate", "close", "detach")

_closing = threading.local()  # .reason while dispose() closes connections on this thread


@dataclass(frozen=True, slots=True)
class PoolInternals:
    """The private parts of a QueuePool poolwatch uses, read once per pool (``pool_internals``).

    Housekeeping and gauges only; ``idle_records`` / ``mutex`` exist for the threaded QueuePool.
    """

    dialect: Any  # pings and rolls back (the engine's dialect; a pool built directly has its own)
    idle_records: deque[Any] | None
    mutex: Any
    max_overflow: int
    recycle: float
    invalidate_time: Callable[[], float]
    inc_overflow: Callable[[], bool]
    dec_overflow: Callable[[], object]
    create: Callable[[], ConnectionPoolEntry]
    give_back: Callable[[ConnectionPoolEntry], None]


def pool_internals(pool: QueuePool) -> PoolInternals:
    """Every private attribute of a SQLAlchemy pool poolwatch uses (pinned by a test)."""
    queue = pool._pool
    return PoolInternals(
        dialect=pool._dialect,
        idle_records=getattr(queue, "queue", None),
        mutex=getattr(queue, "mutex", None),
        max_overflow=pool._max_overflow,
        recycle=pool._recycle,
        invalidate_time=lambda: pool._invalidate_time,
        inc_overflow=pool._inc_overflow,
        dec_overflow=pool._dec_overflow,
        create=pool._create_connection,
        give_back=pool._do_return_conn,
    )


def record_of(connection: PoolProxiedConnection) -> ConnectionPoolEntry:
    """The pool entry behind a checked-out connection (a slot: the public ``.info`` costs ~0.8 us)."""
    return cast("Any", connection)._connection_record  # type: ignore[no-any-return]


def entry_of(connection: object) -> object:
    """A checked-out connection's pool entry, or the entry itself (what ``_return_conn()`` is given):
    the ledger key of NullPool's hooks (sqlalchemy_nullpool.py), called by them as ``key``."""
    return getattr(connection, "_connection_record", connection)


def connected_at(record: ConnectionPoolEntry) -> float:
    """Unix time the entry last opened its connection (``_ConnectionRecord.last_connect_time``)."""
    return float(record.last_connect_time)  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Facts:
    """What poolwatch knows of one connection beyond the hot path."""

    jitter: float = 0.0  # this connection's share of the max-lifetime jitter, drawn at each connect
    close_reason: str | None = None  # why it is being closed, when poolwatch knows before the close


@dataclass(frozen=True, slots=True)
class _Attached:
    """Set on an instrumented pool as ``_poolwatch``: the pool's internals and ledger."""

    instrumentation: SQLAlchemyInstrumentation
    internals: PoolInternals
    ledger: Ledger


class SQLAlchemyInstrumentation:
    """The instrumentation of one engine or pool: its recorder, and what the collector reads."""

    def __init__(self, target: Engine | QueuePool, name: str, recorder: Recorder, server: str = "") -> None:
        self.name = name
        self.recorder = recorder
        self.server = server
        self._target = weakref.ref(target)
        self._facts: weakref.WeakKeyDictionary[ConnectionPoolEntry, _Facts] = weakref.WeakKeyDictionary()
        self._facts_lock = threading.RLock()  # reentrant: a dropped connection's finalizer closes it
        self._registry_remove: Callable[[], None] | None = None

    @property
    def engine(self) -> Engine | None:
        target = self._target()
        return None if target is None or isinstance(target, Pool) else target

    @property
    def pool(self) -> QueuePool | None:
        target = self._target()
        if target is None or isinstance(target, Pool):
            return target
        return target.pool  # type: ignore[return-value]

    def internals(self) -> PoolInternals | None:
        """The current pool's internals (read when it was hooked); None when the pool is gone."""
        attached = _attached(self.pool)
        return None if attached is None else attached.internals

    def state(self) -> PoolState | None:
        pool = self.pool
        internals = self.internals()
        if pool is None or internals is None:
            return None
        max_overflow = internals.max_overflow
        return PoolState(
            idle=pool.checkedin(),
            used=pool.checkedout(),
            size=pool.size(),
            max_connections=float("inf") if max_overflow < 0 else pool.size() + max_overflow,
            overflow=max(0, pool.overflow()),
        )

    def remove(self) -> None:
        """Stop exporting this pool (the hooks stay, recording into a recorder nobody reads)."""
        if self._registry_remove is not None:
            self._registry_remove()
            self._registry_remove = None

    # -- per-connection facts (rare events and housekeeping) ---------------------------------------

    def facts(self, record: ConnectionPoolEntry) -> _Facts:
        with self._facts_lock:  # WeakKeyDictionary.setdefault is not atomic
            facts = self._facts.get(record)
            if facts is None:
                facts = self._facts[record] = _Facts()
            return facts

    def jitter(self, record: ConnectionPoolEntry) -> float:
        facts = self._facts.get(record)
        return 0.0 if facts is None else facts.jitter

    def tag_close(self, record: ConnectionPoolEntry, reason: str) -> None:
        """Count the next close of ``record`` under ``reason`` (unless already tagged)."""
        facts = self.facts(record)
        if facts.close_reason is None:
            facts.close_reason = reason

    def close_with_reason(self, record: ConnectionPoolEntry, reason: str) -> None:
        """Close a pooled connection, counting it under ``reason`` (for housekeeping)."""
        self.facts(record).close_reason = reason
        record.close()

    def invalidate_with_reason(
        self, record: ConnectionPoolEntry, reason: str, error: BaseException | None
    ) -> None:
        """Invalidate a pooled connection, counting its close under ``reason`` (for housekeeping)."""
        self.facts(record).close_reason = reason
        record.invalidate(error)


def instrument(
    engine: Engine | AsyncEngine | QueuePool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
    server: str | None = None,
    holders: int = HOLDER_LIMIT,
) -> SQLAlchemyInstrumentation:
    """Export the pool metrics of ``engine`` (or of a QueuePool built directly) on ``registry``.

    ``registry`` is prometheus_client's default when None. Works for QueuePool engines and for
    ``AsyncEngine`` (AsyncAdaptedQueuePool); keeps working after ``engine.dispose()``. Everything is
    checked before anything changes: a ``TypeError`` / ``ValueError`` leaves the engine as it was
    (not a QueuePool, instrumented already, the name taken on this registry, a bad
    ``leak_threshold``). ``leak_threshold`` (seconds) turns on leak detection. ``counts_from``: the
    recorder of a pool this one replaces under the same name (a target rebuilt on reload), whose
    counters and histograms this one's count on from. ``server``: the ``server`` label, when the
    engine's URL (``host:port/database``, the default; empty for a pool built directly) names the
    server otherwise than the daemon's census of it does. ``holders``: how many holder labels the pool
    keeps apart before the rest are ``other``.
    """
    target: Engine | QueuePool = cast("Any", getattr(engine, "sync_engine", engine))  # AsyncEngine wraps one
    pool = _checked(target if isinstance(target, Pool) else target.pool, name, leak_threshold)
    check_holder_limit(holders, f"poolwatch.instrument({name!r})")
    collector = collector_for(registry)
    recorder = Recorder(name, leak_threshold=leak_threshold, clock=clock)
    recorder.by_holder.labels.limit = holders
    if counts_from is not None:  # before the collector can read it: never a drop to 0
        recorder.carry(counts_from)
    if server is None and not isinstance(target, Pool):
        from poolwatch.serverlabel import sql_server  # noqa: PLC0415 - loaded when a URL needs it

        server = sql_server(target.url)
    elif server is None:
        server = ""
    instrumentation = SQLAlchemyInstrumentation(target, name, recorder, server)
    collector.add(name, instrumentation)  # raises ValueError if the name is taken: nothing changed yet
    instrumentation._registry_remove = lambda: collector.remove(name, instrumentation)
    listeners = _RareEvents(instrumentation)
    try:
        for name_ in _EVENTS:
            event.listen(pool, name_, getattr(listeners, f"on_{name_}"))
        _hook(pool, instrumentation)
    except BaseException:
        for name_ in _EVENTS:
            if event.contains(pool, name_, getattr(listeners, f"on_{name_}")):
                event.remove(pool, name_, getattr(listeners, f"on_{name_}"))
        for hooked in _HOOKED:
            vars(pool).pop(hooked, None)
        instrumentation.remove()
        raise
    return instrumentation


def _checked(pool: Pool, name: str, leak_threshold: float | None) -> QueuePool:
    """``pool``, if poolwatch can instrument it; else the error, before anything changed."""
    if not isinstance(pool, QueuePool):
        raise TypeError(
            f"poolwatch.instrument({name!r}): {type(pool).__name__} is not a QueuePool; "
            "pool metrics need QueuePool or AsyncAdaptedQueuePool"
        )
    if _attached(pool) is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this engine is already instrumented")
    if leak_threshold is not None and not leak_threshold > 0:
        raise ValueError(f"poolwatch.instrument({name!r}): leak_threshold must be > 0")
    try:
        pool_internals(pool)
    except AttributeError as exc:
        raise TypeError(
            f"poolwatch.instrument({name!r}): {type(pool).__name__} lacks what poolwatch reads ({exc})"
        ) from None
    return pool


def _attached(pool: object) -> _Attached | None:
    # The pool's connect hook, or its class's method (whose function has no such attribute).
    hook = getattr(pool, "connect", None)
    attached = getattr(hook, ATTACHED, None)
    return attached if isinstance(attached, _Attached) else None


def _hook(pool: QueuePool, instrumentation: SQLAlchemyInstrumentation) -> QueuePool:
    """Shadow ``pool``'s connect, return, dispose and recreate with hooks (instance attributes).

    Instance attributes rather than a subclass: the pool's class stays the application's, and a
    swapped class measured ~2 % slower per cycle (a deeper MRO on every attribute SQLAlchemy looks up
    on the pool). Its idle connections are idle as of now.
    """
    recorder = instrumentation.recorder
    internals = pool_internals(pool)
    idle: list[Any] = []
    if internals.idle_records is not None:  # the threaded QueuePool; an async pool starts empty here
        with internals.mutex:
            idle = list(internals.idle_records)
    ledger = Ledger(idle, recorder.clock())

    def dispose() -> None:
        _closing.reason = "dispose"
        try:
            type(pool).dispose(pool)
        finally:
            _closing.reason = None

    def recreate() -> QueuePool:
        new = type(pool).recreate(pool)
        return _hook(new, instrumentation) if isinstance(new, QueuePool) else new

    connect = _connect_hook(pool, recorder, ledger)
    setattr(connect, ATTACHED, _Attached(instrumentation, internals, ledger))
    # setattr, never vars(pool): see shadow() in common.py (not imported here, for a lighter import).
    for attribute, hook in (
        ("connect", connect),
        (RETURN_CONN, _return_hook(pool, recorder, ledger)),
        ("dispose", dispose),
        ("recreate", recreate),
    ):
        setattr(pool, attribute, hook)
    recorder.adopt(ledger)
    return pool


def _connect_hook(  # noqa: C901, PLR0915 - unrolled on purpose: each local saves a lookup per checkout
    pool: Pool, recorder: Recorder, ledger: Ledger
) -> Callable[[], PoolProxiedConnection]:
    # Everything the hot path touches is bound to a local of this closure once, and the leak and
    # no-leak variants are separate functions: every bytecode here is paid on every checkout. The
    # pool's own connect() is looked up on its class at each call, so a later patch is honoured.
    clock = recorder.clock
    count = next
    requested = recorder.requested.counter
    handed = recorder.handed.counter
    wait = recorder.waits.append
    failed = recorder.checkout_failed
    internal = recorder.internal_error
    checked_out = ledger.checked_out
    origins = ledger.origins
    frame = getframe
    ident = get_ident
    application_files: set[str] = set()
    last_application_code: list[object] = [None]  # a one-item cache; threads may race on it harmlessly
    walk_out = outside_library
    holders = ledger.holders
    holder_now = current_holder
    holder_named = named_holders
    plain_connect = Pool.connect
    fairy = _ConnectionFairy

    def connect() -> PoolProxiedConnection:
        start = clock()
        count(requested)
        try:
            # What Pool.connect() does, without its frame; a class that overrides it, or a later
            # patch of it, is called instead (both looked up now).
            if type(pool).connect is plain_connect:
                connection: PoolProxiedConnection = fairy._checkout(pool)
            else:
                connection = type(pool).connect(pool)
        except BaseException as exc:
            failed(exc, start, timed_out=isinstance(exc, PoolTimeoutError))
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            record = connection._connection_record
            checked_out[record] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[record] = holder
        except Exception as exc:
            internal(exc)
        return connection

    def connect_tracking_leaks() -> PoolProxiedConnection:
        start = clock()
        count(requested)
        try:
            if type(pool).connect is plain_connect:
                connection: PoolProxiedConnection = fairy._checkout(pool)
            else:
                connection = type(pool).connect(pool)
        except BaseException as exc:
            failed(exc, start, timed_out=isinstance(exc, PoolTimeoutError))
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            record = connection._connection_record
            # capture_origin(), inlined: the call alone would cost ~500 instructions of the budget.
            try:
                caller = frame(CALLER_DEPTH)
            except ValueError:  # a shallower stack: a pool used directly
                caller = frame(1)
            code = caller.f_code
            # The same code as the last checkout found to be the application's (a handler that
            # runs again): known without reading its file name (~600 instructions).
            if code is not last_application_code[0]:
                if code.co_filename in application_files:
                    last_application_code[0] = code
                else:
                    # Maybe still SQLAlchemy's (a Session checking out): the first frame outside
                    # it. Engine.connect() from a file seen before skips this.
                    caller = walk_out(caller, application_files)
                    code = caller.f_code
            origins[record] = (code, caller.f_lasti, ident())
            checked_out[record] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[record] = holder
        except Exception as exc:
            internal(exc)
        return connection

    hook = connect if recorder.leak_threshold is None else connect_tracking_leaks
    hook.__doc__ = Pool.connect.__doc__
    return hook


def _return_hook(  # noqa: C901 - the leak and no-leak variants are separate functions, unrolled on purpose
    pool: Pool, recorder: Recorder, ledger: Ledger
) -> Callable[[ConnectionPoolEntry], None]:
    clock = recorder.clock
    use = recorder.uses.append
    hold = recorder.by_holder.hold
    leaked = recorder.leaked
    internal = recorder.internal_error
    take = ledger.checked_out.pop
    idle_since = ledger.idle_since
    forget_origin = ledger.origins.pop
    holders = ledger.holders
    threshold = recorder.leak_threshold or 0.0
    plain_return = Pool._return_conn

    def return_conn(record: ConnectionPoolEntry) -> None:
        try:
            now = clock()
            started = take(record, None)  # None: never handed out (a failed connect), or before instrument()
            idle_since[record] = now
            if started is not None:
                held = now - started
                holder = holders.pop(record, None) if holders else None
                if holder is None:
                    use(held)
                else:
                    hold((holder, held))
        except Exception as exc:
            internal(exc)
        # What Pool._return_conn() does, without its frame (unless overridden or patched since).
        if type(pool)._return_conn is plain_return:
            pool._do_return_conn(record)
        else:
            type(pool)._return_conn(pool, record)

    def return_conn_tracking_leaks(record: ConnectionPoolEntry) -> None:
        try:
            now = clock()
            started = take(record, None)
            idle_since[record] = now
            if started is not None:
                held = now - started
                holder = holders.pop(record, None) if holders else None
                if holder is None:
                    use(held)
                else:
                    hold((holder, held))
                origin = forget_origin(record, None)
                if leaked or held > threshold:  # known leaks, or one no scrape saw out
                    recorder.returned(record, held, holder, origin)
        except Exception as exc:
            internal(exc)
        if type(pool)._return_conn is plain_return:
            pool._do_return_conn(record)
        else:
            type(pool)._return_conn(pool, record)

    return return_conn if recorder.leak_threshold is None else return_conn_tracking_leaks


class _RareEvents:
    """Listeners for events off the checkout path: connects, invalidations, closes, detaches."""

    def __init__(self, instrumentation: SQLAlchemyInstrumentation) -> None:
        self._instrumentation = instrumentation
        self._recorder = instrumentation.recorder

    def on_connect(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            # The record is stamped just before the driver's connect; this listener runs right after
            # it (and after the dialect's own on-connect set-up).
            self._recorder.connected(max(0.0, time.time() - connected_at(record)))
            facts = self._instrumentation.facts(record)
            facts.jitter = random.uniform(0.0, MAX_JITTER)  # noqa: S311 - not crypto
            facts.close_reason = None
        except Exception as exc:
            self._recorder.internal_error(exc)

    def on_invalidate(
        self, _dbapi_connection: Any, record: ConnectionPoolEntry, exc: BaseException | None
    ) -> None:
        try:
            # SQLAlchemy raises DisconnectionError on checkout when pre-ping finds a dead connection.
            reason = "pre_ping_failed" if isinstance(exc, DisconnectionError) else "invalidated"
            self._instrumentation.tag_close(record, reason)
        except Exception as error:
            self._recorder.internal_error(error)

    def on_soft_invalidate(self, _dbapi_connection: Any, record: ConnectionPoolEntry, _exc: Any) -> None:
        try:
            self._instrumentation.tag_close(record, "invalidated")
        except Exception as error:
            self._recorder.internal_error(error)

    def on_close(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            # Forget an idle connection; one closed while checked out keeps its checkout time
            # until it is returned (its use time is still counted then).
            ledger = self._recorder.ledger
            if record not in ledger.checked_out:
                ledger.idle_since.pop(record, None)
            self._recorder.close(self._close_reason(record))
        except Exception as exc:
            self._recorder.internal_error(exc)

    def on_detach(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            self._recorder.ledger.forget(record)
        except Exception as exc:
            self._recorder.internal_error(exc)

    def _close_reason(self, record: ConnectionPoolEntry) -> str:
        """Why the pool closes this connection, decided inside the ``close`` event."""
        facts = self._instrumentation.facts(record)
        tagged, facts.close_reason = facts.close_reason, None
        if tagged is not None:
            return tagged
        reason = getattr(_closing, "reason", None)
        if reason is not None:
            return str(reason)
        pool, internals = self._instrumentation.pool, self._instrumentation.internals()
        if pool is not None and internals is not None:
            opened = connected_at(record)
            if internals.recycle > -1 and time.time() - opened > internals.recycle:
                return "recycled"
            if internals.invalidate_time() > opened:
                return "invalidated"
            # QueuePool closes a healthy connection on checkin only when its queue is full: overflow.
            if pool.checkedin() >= pool.size():
                return "overflow"
        return "error"
