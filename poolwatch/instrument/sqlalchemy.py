"""Instrumenting a SQLAlchemy engine's QueuePool: hot-path hooks, close reasons, scrape-time sizes.

Wait time runs from the request to the connection handed out, but SQLAlchemy has no "checkout
requested" event (``checkout`` fires after queueing, connecting and pre-ping), and dispatching its
``checkin`` event alone costs ~1 us of a ~15 us cycle. So the pool's ``connect()`` and
``_return_conn()`` are replaced by hooks set as instance attributes on the pool: each does what the
method it shadows did (one call into SQLAlchemy) plus a few GIL-atomic writes, so no frame is added
to the cycle. ``recreate()`` is hooked as well, so the pool ``engine.dispose()`` builds is patched
before the engine uses it.

Rarer facts come from public pool events registered on the engine (connect, invalidate, close,
detach); those travel to recreated pools with the pool's dispatch. The private names used are read in
``pool_internals()``, pinned by a test to the installed SQLAlchemy.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from types import MethodType
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import Pool, QueuePool

from poolwatch.instrument.collector import PoolState, collector_for
from poolwatch.instrument.recorder import MAX_JITTER, Recorder, Stamp

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

# Keys poolwatch keeps in ``ConnectionPoolEntry.info`` (cleared by SQLAlchemy on reconnect).
LIFETIME_JITTER: Final = "poolwatch.jitter"  # this connection's share of the max-lifetime jitter
CLOSE_REASON: Final = "poolwatch.close_reason"
# The application's frame, seen from the connect hook: hook < Engine.raw_connection <
# Connection.__init__ < Engine.connect < application. A leak warning needs a frame reference taken at
# checkout; a referenced frame that *returns* is copied off the stack and materialises its caller
# (~0.3 us each), so the reference is taken past SQLAlchemy's frames, which return at once.
CALLER_DEPTH: Final = 4

_closing = threading.local()  # .reason while poolwatch or dispose() closes connections on this thread


@dataclass(frozen=True, slots=True)
class PoolInternals:
    """The private parts of a QueuePool poolwatch uses, read in one place (``pool_internals``)."""

    # Hot path, chosen for cost (see the module docstring): ``checkout`` is what ``Pool.connect()``
    # does and ``return_conn`` what ``Pool._return_conn()`` does, so the hooks replace those frames
    # instead of adding one each; the hook reads the pool entry behind a checked-out connection as
    # ``connection._connection_record`` (a slot; the public ``.info`` property costs ~0.8 us);
    # ``return_conn_name`` is the method every checkin ends in (``_ConnectionRecord.checkin``),
    # hooked because the checkin event costs ~1 us.
    checkout: Callable[[Pool], PoolProxiedConnection]
    return_conn_name: str
    return_conn: Callable[[ConnectionPoolEntry], None]
    # Housekeeping and gauges. ``idle_records`` / ``mutex`` exist for the threaded QueuePool only.
    idle_records: deque[Any]
    mutex: Any
    max_overflow: int
    recycle: float
    invalidate_time: Callable[[], float]
    inc_overflow: Callable[[], bool]
    dec_overflow: Callable[[], object]
    create: Callable[[], ConnectionPoolEntry]
    give_back: Callable[[ConnectionPoolEntry], None]


def pool_internals(pool: QueuePool) -> PoolInternals:
    """Every private name of SQLAlchemy poolwatch uses (pinned by a test to the installed version)."""
    from sqlalchemy.pool.base import _ConnectionFairy  # noqa: PLC0415 - private: used here only

    pool_class = type(pool)
    # A pool class that overrides connect() or _return_conn() keeps its own code in the chain.
    plain_connect = pool_class.connect is Pool.connect
    plain_return = pool_class._return_conn is Pool._return_conn  # noqa: SLF001
    queue = pool._pool  # noqa: SLF001
    give_back = pool._do_return_conn  # noqa: SLF001
    return PoolInternals(
        checkout=_ConnectionFairy._checkout if plain_connect else pool_class.connect,  # noqa: SLF001
        return_conn_name="_return_conn",
        return_conn=give_back if plain_return else MethodType(pool_class._return_conn, pool),  # noqa: SLF001
        idle_records=getattr(queue, "queue", None),  # type: ignore[arg-type]
        mutex=getattr(queue, "mutex", None),
        max_overflow=pool._max_overflow,  # noqa: SLF001
        recycle=pool._recycle,  # noqa: SLF001
        invalidate_time=lambda: pool._invalidate_time,  # noqa: SLF001
        inc_overflow=pool._inc_overflow,  # noqa: SLF001
        dec_overflow=pool._dec_overflow,  # noqa: SLF001
        create=pool._create_connection,  # noqa: SLF001
        give_back=give_back,
    )


class SQLAlchemyInstrumentation:
    """The instrumentation of one engine: its recorder, and what the collector reads at scrape time."""

    def __init__(self, engine: Engine, name: str, recorder: Recorder) -> None:
        self.name = name
        self.recorder = recorder
        self._engine = weakref.ref(engine)
        self._registry_remove: Callable[[], None] | None = None

    @property
    def engine(self) -> Engine | None:
        return self._engine()

    @property
    def pool(self) -> QueuePool | None:
        engine = self._engine()
        return None if engine is None else engine.pool  # type: ignore[return-value]

    def state(self) -> PoolState | None:
        pool = self.pool
        if pool is None:
            return None
        max_overflow = pool_internals(pool).max_overflow
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


def instrument(
    engine: Engine | AsyncEngine,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
) -> SQLAlchemyInstrumentation:
    """Export ``engine``'s pool metrics on ``registry`` (prometheus_client's default when None).

    Works for QueuePool engines and for ``AsyncEngine`` (AsyncAdaptedQueuePool); keeps working after
    ``engine.dispose()``. A second pool with the same name on one registry, or instrumenting one engine
    twice, raises ``ValueError``. ``leak_threshold`` (seconds) turns on leak detection.
    ``counts_from``: the recorder of a pool this one replaces under the same name (a target rebuilt
    on reload), whose counters and histograms this one's count on from.
    """
    sync_engine: Engine = cast("Engine", getattr(engine, "sync_engine", engine))  # AsyncEngine wraps one
    pool = sync_engine.pool
    if not isinstance(pool, QueuePool):
        raise TypeError(
            f"poolwatch.instrument({name!r}): {type(pool).__name__} is not a QueuePool; "
            "pool metrics need QueuePool or AsyncAdaptedQueuePool"
        )
    if vars(pool).get("_poolwatch") is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this engine is already instrumented")
    if leak_threshold is not None and leak_threshold <= 0:
        raise ValueError(f"poolwatch.instrument({name!r}): leak_threshold must be > 0")
    recorder = Recorder(name, leak_threshold=leak_threshold, clock=clock)
    if counts_from is not None:  # before the collector can read it: never a drop to 0
        recorder.carry(counts_from)
    instrumentation = SQLAlchemyInstrumentation(sync_engine, name, recorder)
    collector = collector_for(registry)
    collector.add(name, instrumentation)
    instrumentation._registry_remove = lambda: collector.remove(name, instrumentation)  # noqa: SLF001
    _listen(sync_engine, recorder)
    _patch(pool, recorder)
    return instrumentation


def _patch(pool: QueuePool, recorder: Recorder) -> QueuePool:
    """Hook ``pool`` through instance attributes, which shadow its class's methods.

    Instance attributes rather than a subclass: a swapped class measured ~2 % slower per cycle (a
    deeper MRO on every attribute SQLAlchemy looks up on the pool). ``recreate`` is hooked too, so
    the pool ``engine.dispose()`` puts in place is patched before the engine hands it out.
    """
    base = type(pool)
    internals = pool_internals(pool)

    def dispose() -> None:
        _closing.reason = "dispose"
        try:
            base.dispose(pool)
        finally:
            _closing.reason = None

    def recreate() -> QueuePool:
        return _patch(base.recreate(pool), recorder)

    # This pool's own stamps (see Recorder.stamps); its idle connections are idle as of now.
    idle: list[Any] = []
    if internals.idle_records is not None:  # the threaded QueuePool; an async pool starts empty here
        with internals.mutex:
            idle = list(internals.idle_records)
    stamps: dict[object, Stamp] = dict.fromkeys(idle, recorder.clock())
    recorder.stamps = stamps
    vars(pool).update(
        {
            "connect": _connect_hook(pool, internals, recorder, stamps),
            internals.return_conn_name: _checkin_hook(internals.return_conn, recorder, stamps),
            "dispose": dispose,
            "recreate": recreate,
            "_poolwatch": recorder,
        }
    )
    return pool


def _connect_hook(
    pool: Pool, internals: PoolInternals, recorder: Recorder, stamps: dict[object, Stamp]
) -> Callable[[], PoolProxiedConnection]:
    # Everything the hot path touches is bound to a local of this closure once, and the leak and
    # no-leak variants are separate functions: every bytecode here is paid on every checkout. The
    # record is read as ``connection._connection_record`` (a slot: no call), pinned by a test.
    clock = recorder.clock
    count = next
    requested = recorder.requested.counter
    handed = recorder.handed.counter
    wait = recorder.waits.append
    failed = recorder.checkout_failed
    base_connect = internals.checkout
    getframe = sys._getframe  # noqa: SLF001

    def connect() -> PoolProxiedConnection:
        start = clock()
        count(requested)
        try:
            connection = base_connect(pool)
        except BaseException as exc:
            failed(exc)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            stamps[connection._connection_record] = (now, None)  # noqa: SLF001
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    def connect_tracking_leaks() -> PoolProxiedConnection:
        start = clock()
        count(requested)
        try:
            connection = base_connect(pool)
        except BaseException as exc:
            failed(exc)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            try:
                frame = getframe(CALLER_DEPTH)
            except ValueError:  # a shallower entry point than Engine.connect()
                frame = getframe(1)
            stamps[connection._connection_record] = (now, frame)  # noqa: SLF001
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    hook = connect if recorder.leak_threshold is None else connect_tracking_leaks
    hook.__doc__ = Pool.connect.__doc__
    return hook


def _checkin_hook(
    base_return: Callable[[ConnectionPoolEntry], None], recorder: Recorder, stamps: dict[object, Stamp]
) -> Callable[[ConnectionPoolEntry], None]:
    clock = recorder.clock
    use = recorder.uses.append
    leaked = recorder.leaked

    def return_conn(record: ConnectionPoolEntry) -> None:
        try:
            now = clock()
            checkout = stamps[record]
            stamps[record] = now
            use(now - checkout[0])  # type: ignore[index]
            if leaked:
                recorder.returned(record, checkout)  # type: ignore[arg-type]
        except KeyError:  # checked out before instrument(): no use time to record
            stamps[record] = now
        except Exception as exc:
            recorder.internal_error(exc)
        base_return(record)

    return return_conn


def _listen(engine: Engine, recorder: Recorder) -> None:
    listeners = _RareEvents(engine, recorder)
    event.listen(engine, "connect", listeners.on_connect)
    event.listen(engine, "invalidate", listeners.on_invalidate)
    event.listen(engine, "soft_invalidate", listeners.on_soft_invalidate)
    event.listen(engine, "close", listeners.on_close)
    event.listen(engine, "detach", listeners.on_detach)


class _RareEvents:
    """Listeners for events off the checkout path: connects, invalidations, closes, detaches."""

    def __init__(self, engine: Engine, recorder: Recorder) -> None:
        self._engine = weakref.ref(engine)
        self._recorder = recorder

    def on_connect(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            # The record is stamped just before the driver's connect; this listener runs right after
            # it (and after the dialect's own on-connect set-up).
            self._recorder.connected(max(0.0, time.time() - connected_at(record)))
            record.info[LIFETIME_JITTER] = random.uniform(0.0, MAX_JITTER)  # noqa: S311 - not crypto
        except Exception as exc:
            self._recorder.internal_error(exc)

    def on_invalidate(
        self, _dbapi_connection: Any, record: ConnectionPoolEntry, exc: BaseException | None
    ) -> None:
        try:
            # SQLAlchemy raises DisconnectionError on checkout when pre-ping finds a dead connection.
            reason = "pre_ping_failed" if isinstance(exc, DisconnectionError) else "invalidated"
            record.info.setdefault(CLOSE_REASON, reason)
        except Exception as error:
            self._recorder.internal_error(error)

    def on_soft_invalidate(self, _dbapi_connection: Any, record: ConnectionPoolEntry, _exc: Any) -> None:
        try:
            record.info.setdefault(CLOSE_REASON, "invalidated")
        except Exception as error:
            self._recorder.internal_error(error)

    def on_close(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            # Forget an idle connection; one closed while checked out keeps its checkout time
            # until it is returned (its use time is still counted then).
            stamps = self._recorder.stamps
            if not isinstance(stamps.get(record), tuple):
                stamps.pop(record, None)
            self._recorder.close(_close_reason(record, self._engine()))
        except Exception as exc:
            self._recorder.internal_error(exc)

    def on_detach(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            self._recorder.stamps.pop(record, None)
        except Exception as exc:
            self._recorder.internal_error(exc)


def connected_at(record: ConnectionPoolEntry) -> float:
    """Unix time the record last opened its connection (``_ConnectionRecord.last_connect_time``)."""
    return float(cast("Any", record).last_connect_time)


def _close_reason(record: ConnectionPoolEntry, engine: Engine | None) -> str:
    """Why the pool closes this connection, decided inside the ``close`` event."""
    tagged = record.info.pop(CLOSE_REASON, None)
    if tagged is not None:
        return str(tagged)
    reason = getattr(_closing, "reason", None)
    if reason is not None:
        return str(reason)
    pool = engine.pool if engine is not None else None
    if isinstance(pool, QueuePool):
        internals = pool_internals(pool)
        if internals.recycle > -1 and time.time() - connected_at(record) > internals.recycle:
            return "recycled"
        if internals.invalidate_time() > connected_at(record):
            return "invalidated"
        # QueuePool closes a healthy connection on checkin only when its queue is full: overflow.
        if pool.checkedin() >= pool.size():
            return "overflow"
    return "error"


def close_with_reason(record: ConnectionPoolEntry, reason: str) -> None:
    """Close a pooled connection, counting it under ``reason`` (for housekeeping)."""
    record.info[CLOSE_REASON] = reason
    record.close()
