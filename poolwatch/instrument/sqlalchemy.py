"""Instrumenting a SQLAlchemy engine's QueuePool: hot-path hooks, close reasons, scrape-time sizes.

Wait time is measured from the request to the connection handed out, but SQLAlchemy has no "checkout
requested" event (``checkout`` fires after queueing, connecting and pre-ping). So the pool's public
``connect()`` is wrapped by swapping the pool's class for a per-instrumentation subclass: a class
attribute lookup and one extra Python frame per checkout, nothing per checkin. The swap survives
``engine.dispose()`` because ``QueuePool.recreate()`` builds ``self.__class__``, and the pool's event
listeners (checkin, connect, invalidate, close) travel with it too (``_dispatch=self.dispatch``).

Everything else uses public pool events. The private attributes housekeeping and the gauges need are
read in one place, ``pool_internals()``, pinned by a test to the installed SQLAlchemy version.
"""

from __future__ import annotations

import operator
import random
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import QueuePool

from poolwatch.instrument.collector import PoolState, collector_for
from poolwatch.instrument.recorder import Recorder

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

# Keys poolwatch keeps in ``ConnectionPoolEntry.info`` (cleared by SQLAlchemy on reconnect).
LIFETIME_JITTER: Final = "poolwatch.jitter"  # this connection's share of the max-lifetime jitter
CLOSE_REASON: Final = "poolwatch.close_reason"
MAX_JITTER: Final = 0.025  # max lifetime is shortened by up to 2.5 %, drawn per connection

_closing = threading.local()  # .reason while poolwatch or dispose() closes connections on this thread


@dataclass(frozen=True, slots=True)
class PoolInternals:
    """The private parts of a QueuePool that housekeeping and the gauges need, in one place."""

    idle_records: deque[Any]
    mutex: Any
    max_overflow: int
    recycle: float
    invalidate_time: Callable[[], float]
    inc_overflow: Callable[[], bool]
    dec_overflow: Callable[[], object]
    create: Callable[[], ConnectionPoolEntry]
    give_back: Callable[[ConnectionPoolEntry], None]


@dataclass(frozen=True, slots=True)
class HotPathInternals:
    """The private parts the checkout/checkin hooks use: chosen for cost, see the module docstring."""

    # The pool entry behind a checked-out connection (the public ``.info`` property costs ~0.8 us).
    record_of: Callable[[PoolProxiedConnection], ConnectionPoolEntry]
    # Where every checkin ends (``_ConnectionRecord.checkin``); overriding it costs one frame, where
    # SQLAlchemy's checkin event dispatch costs ~1 us.
    return_conn_name: str
    return_conn: Callable[[Pool, ConnectionPoolEntry], None]


def hot_path_internals(pool_class: type[QueuePool]) -> HotPathInternals:
    """With ``pool_internals``, every private name of SQLAlchemy poolwatch uses (pinned by a test)."""
    return HotPathInternals(
        record_of=operator.attrgetter("_connection_record"),
        return_conn_name="_return_conn",
        return_conn=pool_class._return_conn,  # noqa: SLF001
    )


def pool_internals(pool: QueuePool) -> PoolInternals:
    """Every private attribute of SQLAlchemy poolwatch reads (tested against the installed version).

    ``idle_records`` and ``mutex`` are only valid for the threaded QueuePool (not the asyncio one).
    """
    queue = pool._pool  # noqa: SLF001
    return PoolInternals(
        idle_records=getattr(queue, "queue", None),  # type: ignore[arg-type]
        mutex=getattr(queue, "mutex", None),
        max_overflow=pool._max_overflow,  # noqa: SLF001
        recycle=pool._recycle,  # noqa: SLF001
        invalidate_time=lambda: pool._invalidate_time,  # noqa: SLF001
        inc_overflow=pool._inc_overflow,  # noqa: SLF001
        dec_overflow=pool._dec_overflow,  # noqa: SLF001
        create=pool._create_connection,  # noqa: SLF001
        give_back=pool._do_return_conn,  # noqa: SLF001
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
) -> SQLAlchemyInstrumentation:
    """Export ``engine``'s pool metrics on ``registry`` (prometheus_client's default when None).

    Works for QueuePool engines and for ``AsyncEngine`` (AsyncAdaptedQueuePool); keeps working after
    ``engine.dispose()``. A second pool with the same name on one registry, or instrumenting one engine
    twice, raises ``ValueError``. ``leak_threshold`` (seconds) turns on leak detection.
    """
    sync_engine: Engine = cast("Engine", getattr(engine, "sync_engine", engine))  # AsyncEngine wraps one
    pool = sync_engine.pool
    if not isinstance(pool, QueuePool):
        raise TypeError(
            f"poolwatch.instrument({name!r}): {type(pool).__name__} is not a QueuePool; "
            "pool metrics need QueuePool or AsyncAdaptedQueuePool"
        )
    if getattr(type(pool), "_poolwatch", None) is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this engine is already instrumented")
    if leak_threshold is not None and leak_threshold <= 0:
        raise ValueError(f"poolwatch.instrument({name!r}): leak_threshold must be > 0")
    recorder = Recorder(name, leak_threshold=leak_threshold, clock=clock)
    instrumentation = SQLAlchemyInstrumentation(sync_engine, name, recorder)
    collector = collector_for(registry)
    collector.add(name, instrumentation)
    instrumentation._registry_remove = lambda: collector.remove(name, instrumentation)  # noqa: SLF001
    _listen(sync_engine, recorder)
    pool.__class__ = _instrumented_class(type(pool), recorder)
    return instrumentation


def _instrumented_class(base: type[QueuePool], recorder: Recorder) -> type[QueuePool]:
    internals = hot_path_internals(base)

    def dispose(self: QueuePool) -> None:
        _closing.reason = "dispose"
        try:
            base.dispose(self)
        finally:
            _closing.reason = None

    return type(
        base.__name__,
        (base,),
        {
            # The pool's logger name is built from the class: keep SQLAlchemy's.
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "connect": _connect_hook(base.connect, internals, recorder),
            internals.return_conn_name: _checkin_hook(internals.return_conn, recorder),
            "dispose": dispose,
            "_poolwatch": recorder,
        },
    )


def _connect_hook(
    base_connect: Callable[[Pool], PoolProxiedConnection], internals: HotPathInternals, recorder: Recorder
) -> Callable[[Pool], PoolProxiedConnection]:
    # Everything the hot path touches is bound to a local of this closure once.
    clock = recorder.clock
    requested = recorder.requested.hit
    handed = recorder.handed.hit
    wait = recorder.waits.append
    out = recorder.out
    failed = recorder.checkout_failed
    record_of = internals.record_of
    getframe = sys._getframe if recorder.leak_threshold is not None else None  # noqa: SLF001

    def connect(self: Pool) -> PoolProxiedConnection:
        start = clock()
        requested()
        try:
            connection = base_connect(self)
        except BaseException as exc:
            failed(exc)
            raise
        now = clock()
        handed()
        wait(now - start)
        try:
            # The caller's frame (Engine.raw_connection) links to the application's frames: a
            # reference now, formatted only if this connection turns out to be a leak.
            out[record_of(connection)] = (now, getframe(1) if getframe is not None else None)
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    connect.__doc__ = base_connect.__doc__
    return connect


def _checkin_hook(
    base_return: Callable[[Pool, ConnectionPoolEntry], None], recorder: Recorder
) -> Callable[[Pool, ConnectionPoolEntry], None]:
    clock = recorder.clock
    out_pop = recorder.out.pop
    idle_since = recorder.idle_since
    use = recorder.uses.append
    leaked = recorder.leaked

    def return_conn(self: Pool, record: ConnectionPoolEntry) -> None:
        try:
            now = clock()
            idle_since[record] = now
            checkout = out_pop(record, None)
            if checkout is not None:
                use(now - checkout[0])
                if leaked:
                    recorder.returned(record, checkout)
        except Exception as exc:
            recorder.internal_error(exc)
        base_return(self, record)

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
            self._recorder.idle_since[record] = self._recorder.clock()
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
            self._recorder.idle_since.pop(record, None)
            self._recorder.close(_close_reason(record, self._engine()))
        except Exception as exc:
            self._recorder.internal_error(exc)

    def on_detach(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            self._recorder.out.pop(record, None)
            self._recorder.idle_since.pop(record, None)
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
