"""Instrumenting a psycopg2 pool (``psycopg2.pool.SimpleConnectionPool`` / ``ThreadedConnectionPool``).

``getconn()`` and ``putconn()`` are shadowed by hooks set as instance attributes (each calls the
pool class's own method, looked up when it runs), for waits, uses, checkouts, pending requests and
leaks; a ``PoolError`` saying "connection pool exhausted" (psycopg2's pools never wait) is counted as
a timeout. ``_connect()`` likewise, for connect times and connect errors by reason. Sizes are read
from the pool's lists of idle and handed-out connections and its ``minconn`` / ``maxconn``. Every
private name of psycopg2 poolwatch reads is read in this module.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psycopg2.pool

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import (
    Base,
    check_threshold,
    checkout_hooks,
    new_recorder,
    register,
    timed_connect,
    undone_on_failure,
)
from poolwatch.instrument.recorder import Ledger

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.recorder import Recorder

_LIBRARY_DIR: Final = str(Path(psycopg2.__file__).parent) + os.sep
_HOOKED: Final = ("getconn", "putconn", "_connect")
ATTACHED: Final = "_poolwatch"


def _exhausted(exc: BaseException) -> bool:
    return isinstance(exc, psycopg2.pool.PoolError) and "exhausted" in str(exc)


class Psycopg2PoolInstrumentation(Base):
    """The instrumentation of one psycopg2 pool."""

    def __init__(self, pool: psycopg2.pool.AbstractConnectionPool, name: str, recorder: Recorder) -> None:
        super().__init__(name, recorder)
        self._pool = weakref.ref(pool)
        recorder.min_idle = int(pool.minconn)

    @property
    def pool(self) -> psycopg2.pool.AbstractConnectionPool | None:
        return self._pool()

    def state(self) -> PoolState | None:
        pool = self._pool()
        if pool is None:
            return None
        idle = len(pool._pool)
        used = len(pool._used)
        return PoolState(
            idle=idle, used=used, size=idle + used, max_connections=float(pool.maxconn), overflow=0
        )


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
    if getattr(vars(pool).get("getconn"), ATTACHED, None) is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this pool is already instrumented")
    check_threshold("instrument", name, leak_threshold)
    missing = [attr for attr in ("_pool", "_used", "minconn", "maxconn") if not hasattr(pool, attr)]
    if missing or not callable(getattr(type(pool), "_connect", None)):
        raise TypeError(
            f"poolwatch.instrument({name!r}): {type(pool).__name__} lacks {missing or '_connect'}"
        )
    recorder = new_recorder(name, leak_threshold, clock, counts_from)
    instrumentation = Psycopg2PoolInstrumentation(pool, name, recorder)
    instrumentation.server = server or ""

    register(registry, instrumentation, undone_on_failure(pool, _HOOKED, lambda: _hook(pool, recorder)))
    return instrumentation


def _hook(pool: psycopg2.pool.AbstractConnectionPool, recorder: Recorder) -> None:
    ledger = Ledger()
    ref: Callable[[], Any] = weakref.ref(pool)
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
        return type(this)._connect(this, *args, **kwargs)

    # The pool connects inside getconn() only, whose hook counts a failure: the connect hook times.
    connect = timed_connect(recorder, class_connect, count_failures=False)
    get.__doc__ = type(pool).getconn.__doc__
    put.__doc__ = type(pool).putconn.__doc__
    setattr(get, ATTACHED, ledger)
    vars(pool).update({"getconn": get, "putconn": put, "_connect": connect})
    recorder.adopt(ledger)
