"""Instrumenting a SQLAlchemy engine on ``NullPool`` (the usual set-up behind PgBouncer in transaction
mode): every checkout opens a connection and every checkin closes it.

So what such a service needs to see is its connections: how many are open now (checked out: a
NullPool keeps none idle), how many were opened (checkouts), how long opening took (the wait and
create histograms) and why it failed (connect errors by reason), plus use times and leaks. The
pool's ``connect()``, ``_return_conn()`` and ``recreate()`` are shadowed by hooks set as instance
attributes, as for QueuePool (poolwatch/instrument/sqlalchemy.py), each calling the pool class's own
method looked up when it runs; connect times come from the public ``connect`` pool event. The private
names of SQLAlchemy read here (the return method's, a connection's entry, its connect time) are read
by sqlalchemy.py's accessors, bound into the hooks when the pool is instrumented.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import Base, check_threshold, checkout_hooks, new_recorder, register, shadow
from poolwatch.instrument.recorder import Ledger
from poolwatch.instrument.sqlalchemy import RETURN_CONN, connected_at, entry_of
from poolwatch.serverlabel import sql_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry

    from poolwatch.instrument.recorder import Recorder

_LIBRARY_DIR: Final = str(Path(sqlalchemy.__file__).parent) + os.sep
_HOOKED: Final = ("connect", RETURN_CONN, "recreate")
ATTACHED: Final = "_poolwatch"


def _never(_exc: BaseException) -> bool:
    return False  # a NullPool has no limit to run into


class NullPoolInstrumentation(Base):
    """The instrumentation of one NullPool engine."""

    def __init__(self, engine: Engine, name: str, recorder: Recorder) -> None:
        super().__init__(name, recorder)
        self._engine = weakref.ref(engine)
        # The ledger of every pool of the engine still alive: one that engine.dispose() replaced
        # lives on while a connection it handed out does, and that connection is still open. Each
        # reference takes itself out of the list as its ledger goes (list operations are atomic:
        # no lock, which a fork could leave held).
        self._ledgers: list[weakref.ref[Ledger]] = []

    def add_ledger(self, ledger: Ledger) -> None:
        self._ledgers.append(weakref.ref(ledger, self._gone))

    def _gone(self, ref: weakref.ref[Ledger]) -> None:
        with contextlib.suppress(ValueError):
            self._ledgers.remove(ref)

    @property
    def pool(self) -> NullPool | None:
        engine = self._engine()
        return None if engine is None else cast("NullPool", engine.pool)

    def state(self) -> PoolState | None:
        if self._engine() is None:
            return None
        # A NullPool closes on checkin: what is open is what is checked out, from any of its pools.
        ledgers = self._ledgers.copy()
        open_now = sum(len(ledger.checked_out) for ref in ledgers if (ledger := ref()) is not None)
        return PoolState(idle=0, used=open_now, size=open_now, max_connections=float("inf"), overflow=0)


def instrument_nullpool(
    engine: Engine | AsyncEngine,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
    server: str | None = None,
) -> NullPoolInstrumentation:
    """Export the connection metrics of an engine on ``NullPool``. Checked before anything changes."""
    target: Engine = cast("Any", getattr(engine, "sync_engine", engine))
    pool = target.pool
    if not isinstance(pool, NullPool):
        raise TypeError(f"poolwatch.instrument({name!r}): {type(pool).__name__} is not a NullPool")
    if getattr(getattr(pool, "connect", None), ATTACHED, None) is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this engine is already instrumented")
    check_threshold("instrument", name, leak_threshold)
    recorder = new_recorder(name, leak_threshold, clock, counts_from)
    instrumentation = NullPoolInstrumentation(target, name, recorder)
    instrumentation.server = sql_server(target.url) if server is None else server

    def on_connect(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:
            recorder.connected(max(0.0, time.time() - connected_at(record)))
        except Exception as exc:
            recorder.internal_error(exc)

    def hook() -> None:
        try:
            event.listen(pool, "connect", on_connect)
            _hook(pool, recorder, on_connect, instrumentation)
        except BaseException:
            if event.contains(pool, "connect", on_connect):
                event.remove(pool, "connect", on_connect)
            for hooked in _HOOKED:
                vars(pool).pop(hooked, None)
            raise

    register(registry, instrumentation, hook)
    return instrumentation


def _hook(
    pool: NullPool,
    recorder: Recorder,
    on_connect: Callable[..., None],
    instrumentation: NullPoolInstrumentation,
) -> None:
    ledger = Ledger()
    connect, return_conn = checkout_hooks(
        "connect",
        RETURN_CONN,
        weakref.ref(pool),
        recorder,
        ledger,
        exhausted=_never,
        key=entry_of,
        library_dir=_LIBRARY_DIR,
    )
    ref: Callable[[], Any] = weakref.ref(pool)

    def recreate() -> Any:
        this = ref()
        new = type(this).recreate(this)
        if isinstance(new, NullPool):  # the pool engine.dispose() puts in place (events carry over)
            _hook(new, recorder, on_connect, instrumentation)
        return new

    connect.__doc__ = type(pool).connect.__doc__
    setattr(connect, ATTACHED, ledger)
    shadow(pool, {"connect": connect, RETURN_CONN: return_conn, "recreate": recreate})
    recorder.adopt(ledger)
    instrumentation.add_ledger(ledger)
