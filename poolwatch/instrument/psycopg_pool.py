"""Instrumenting a psycopg 3 pool (``psycopg_pool.ConnectionPool`` / ``AsyncConnectionPool``).

Sizes come from the pool's public ``get_stats()`` when Prometheus scrapes (never ``pop_stats()``,
which resets the counters others read; a counter still at 0 may be missing from it). ``getconn()``
and ``putconn()`` (which ``connection()`` calls too) are shadowed by hooks set as instance
attributes, for the wait and use histograms, checkouts, pending requests, timeouts (``PoolTimeout``,
``TooManyRequests``) and leaks; ``_connect()`` likewise, for connect times and connect errors by
reason (the pool connects on its own workers, so a caller only ever sees a timeout). The pool's
``configure`` / ``check`` / ``reset`` callbacks stay the application's. The connections handed out
are held in the ledger by weak reference: the pool keeps none of them, and neither does poolwatch.
Every private name of psycopg_pool poolwatch reads (``_connect``) is read in this module.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psycopg.conninfo
import psycopg_pool

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import (
    Base,
    async_checkout_hooks,
    async_timed_connect,
    check_threshold,
    checkout_hooks,
    new_recorder,
    register,
    shadow,
    timed_connect,
    undone_on_failure,
)
from poolwatch.instrument.recorder import Ledger
from poolwatch.serverlabel import pg_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.recorder import Recorder

AnyPool = psycopg_pool.ConnectionPool[Any] | psycopg_pool.AsyncConnectionPool[Any]

_LIBRARY_DIR: Final = str(Path(psycopg_pool.__file__).parent) + os.sep
_HOOKED: Final = ("getconn", "putconn", "_connect")
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
        return PoolState(
            idle=idle,
            used=max(0, size - idle),
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
    else:
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

        def class_connect_sync(*args: Any, **kwargs: Any) -> Any:
            this = ref()
            return type(this)._connect(this, *args, **kwargs)

        connect = timed_connect(recorder, class_connect_sync)
    get.__doc__ = type(pool).getconn.__doc__
    put.__doc__ = type(pool).putconn.__doc__
    setattr(get, ATTACHED, ledger)
    shadow(pool, {"getconn": get, "putconn": put, "_connect": connect})
    recorder.adopt(ledger)
