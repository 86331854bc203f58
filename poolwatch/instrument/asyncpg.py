"""Instrumenting an asyncpg pool (``asyncpg.create_pool()``, once awaited).

``asyncpg.Pool`` has ``__slots__`` and no ``__weakref__``: no hook can be set on the pool itself,
and poolwatch cannot refer to it weakly. So the hooks go on the pool's own queue of connection
holders, whose ``get()`` every ``acquire()`` awaits and whose ``put_nowait()`` every release (and
every close of a connection) calls: waits run from the request to the holder handed out (a connect
the holder then makes is timed on its own), uses from there to the holder's return. A cancelled wait
for a holder is counted as a timeout: that is how ``acquire(timeout=...)`` ends one. The pool's
connect function (its ``connect=`` argument, or asyncpg's ``connect``, looked up at each call) is
wrapped for connect times and errors by reason. Sizes come from the pool's public ``get_size()``,
``get_idle_size()``, ``get_min_size()`` and ``get_max_size()``, reached through a weak reference to
one of its holders. Every private name of asyncpg poolwatch reads is read in this module.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import asyncpg.connection

from poolwatch.instrument.collector import PoolState
from poolwatch.instrument.common import (
    Base,
    async_checkout_hooks,
    async_timed_connect,
    check_threshold,
    new_recorder,
    register,
    shadow,
)
from poolwatch.instrument.recorder import Ledger
from poolwatch.serverlabel import pg_server, pg_url_params

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.recorder import Recorder

_LIBRARY_DIR: Final = str(Path(asyncpg.__file__).parent) + os.sep
_HOOKED: Final = ("get", "put_nowait")
ATTACHED: Final = "_poolwatch"


def _exhausted(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError | TimeoutError)


class AsyncpgInstrumentation(Base):
    """The instrumentation of one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, name: str, recorder: Recorder) -> None:
        super().__init__(name, recorder)
        self._holders = [weakref.ref(holder) for holder in pool._holders]

    @property
    def pool(self) -> asyncpg.Pool | None:
        for ref in self._holders:
            holder = ref()
            if holder is not None:
                return holder._pool
        return None

    def state(self) -> PoolState | None:
        pool = self.pool
        if pool is None:
            return None
        size = pool.get_size()
        idle = pool.get_idle_size()
        self.recorder.min_idle = pool.get_min_size()
        return PoolState(
            idle=idle,
            used=max(0, size - idle),
            size=size,
            max_connections=float(pool.get_max_size()),
            overflow=0,
        )


def instrument_asyncpg(
    pool: asyncpg.Pool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
    server: str | None = None,
) -> AsyncpgInstrumentation:
    """Export the metrics of an asyncpg pool on ``registry`` (the pool must have been awaited).

    Checked before anything changes: a ``TypeError`` / ``ValueError`` leaves the pool as it was.
    """
    if not isinstance(pool, asyncpg.Pool):
        raise TypeError(f"poolwatch.instrument({name!r}): {type(pool).__name__} is not an asyncpg.Pool")
    queue = getattr(pool, "_queue", None)
    if queue is None or not pool._holders:
        raise ValueError(
            f"poolwatch.instrument({name!r}): the asyncpg pool is not initialised yet; "
            "instrument it after `await asyncpg.create_pool(...)`"
        )
    if getattr(getattr(queue, "get", None), ATTACHED, None) is not None:
        raise ValueError(f"poolwatch.instrument({name!r}): this pool is already instrumented")
    check_threshold("instrument", name, leak_threshold)
    recorder = new_recorder(name, leak_threshold, clock, counts_from)
    instrumentation = AsyncpgInstrumentation(pool, name, recorder)
    instrumentation.server = _server(pool) if server is None else server
    original_connect = pool._connect

    def hook() -> None:
        try:
            _hook(pool, queue, recorder)
        except BaseException:
            for hooked in _HOOKED:
                vars(queue).pop(hooked, None)
            pool._connect = original_connect
            raise

    register(registry, instrumentation, hook)
    return instrumentation


def _server(pool: asyncpg.Pool) -> str:
    """The ``server`` label from the DSN and keywords the pool connects with (keywords win, as in
    asyncpg); empty if they cannot be read."""
    try:
        args = pool._connect_args or [None]
        params: dict[str, Any] = pg_url_params(args[0]) if args[0] else {}
        kwargs = pool._connect_kwargs
        params.update({_LABELLED[key]: kwargs[key] for key in _LABELLED if kwargs.get(key)})
        return pg_server(params)
    except Exception:
        return ""


# asyncpg's keywords for what the label names, and their libpq names.
_LABELLED: Final = {"host": "host", "port": "port", "database": "dbname"}


def _hook(pool: asyncpg.Pool, queue: Any, recorder: Recorder) -> None:
    ledger = Ledger()
    get, put = async_checkout_hooks(
        "get",
        "put_nowait",
        weakref.ref(queue),
        recorder,
        ledger,
        exhausted=_exhausted,
        key=None,
        library_dir=_LIBRARY_DIR,
        put_is_async=False,
    )
    setattr(get, ATTACHED, ledger)
    connect = pool._connect
    if connect is asyncpg.connection.connect:

        async def connect_now(*args: Any, **kwargs: Any) -> Any:
            return await asyncpg.connection.connect(*args, **kwargs)  # a later patch is honoured

        connect = connect_now
    shadow(queue, {"get": get, "put_nowait": put})
    pool._connect = async_timed_connect(recorder, connect)
    recorder.adopt(ledger)
