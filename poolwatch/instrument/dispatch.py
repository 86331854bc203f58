"""``poolwatch.instrument(obj, name=...)``: one entry point for every pool kind poolwatch supports.

The kind is decided from the classes of ``obj`` (their module and name, along its MRO), so no pool
library is imported to find out: the adapter of the kind found, and with it its library (already
loaded, since the application built ``obj`` with it), is imported only then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final, overload

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis
    from prometheus_client.registry import CollectorRegistry
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import Pool

    from poolwatch.instrument.common import Instrumentation
    from poolwatch.instrument.recorder import Recorder
    from poolwatch.instrument.redis import RedisInstrumentation
    from poolwatch.instrument.sqlalchemy import SQLAlchemyInstrumentation

# (module, class name) of a class in the object's MRO -> (adapter module, its function).
_KINDS: Final[dict[tuple[str, str], tuple[str, str]]] = {
    ("sqlalchemy.engine.base", "Engine"): ("poolwatch.instrument.sqlalchemy", "instrument"),
    ("sqlalchemy.ext.asyncio.engine", "AsyncEngine"): ("poolwatch.instrument.sqlalchemy", "instrument"),
    ("sqlalchemy.pool.base", "Pool"): ("poolwatch.instrument.sqlalchemy", "instrument"),
    ("psycopg_pool.pool", "ConnectionPool"): ("poolwatch.instrument.psycopg_pool", "instrument_psycopg_pool"),
    ("psycopg_pool.pool_async", "AsyncConnectionPool"): (
        "poolwatch.instrument.psycopg_pool",
        "instrument_psycopg_pool",
    ),
    ("asyncpg.pool", "Pool"): ("poolwatch.instrument.asyncpg", "instrument_asyncpg"),
    ("psycopg2.pool", "AbstractConnectionPool"): (
        "poolwatch.instrument.psycopg2_pool",
        "instrument_psycopg2_pool",
    ),
    ("redis.client", "Redis"): ("poolwatch.instrument.redis", "instrument_redis"),
    ("redis.connection", "ConnectionPool"): ("poolwatch.instrument.redis", "instrument_redis"),
    ("redis.asyncio.client", "Redis"): ("poolwatch.instrument.redis_async", "instrument_redis_async"),
    ("redis.asyncio.connection", "ConnectionPool"): (
        "poolwatch.instrument.redis_async",
        "instrument_redis_async",
    ),
}

SUPPORTED: Final = (
    "a SQLAlchemy Engine or AsyncEngine (QueuePool, AsyncAdaptedQueuePool or NullPool; any driver), "
    "psycopg_pool.ConnectionPool or AsyncConnectionPool, asyncpg.Pool, "
    "psycopg2.pool.SimpleConnectionPool or ThreadedConnectionPool, "
    "a redis-py client or connection pool (sync or redis.asyncio)"
)


def adapter_of(obj: object) -> tuple[str, str] | None:
    """The adapter module and function for ``obj``'s kind, or None if poolwatch has none."""
    for cls in type(obj).__mro__:
        found = _KINDS.get((cls.__module__, cls.__qualname__))
        if found is not None:
            return found
    return None


@overload
def instrument(
    obj: Engine | AsyncEngine | Pool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = ...,
    counts_from: Recorder | None = None,
    server: str | None = None,
    holders: int = ...,
) -> SQLAlchemyInstrumentation: ...


@overload
def instrument(
    obj: object,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = ...,
    counts_from: Recorder | None = None,
    server: str | None = None,
) -> Instrumentation: ...


def instrument(
    obj: object,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    **options: Any,
) -> Any:
    """Export the pool metrics of ``obj`` on ``registry`` (prometheus_client's default when None).

    ``obj`` is any pool kind in ``SUPPORTED``; anything else is a ``TypeError`` naming them.
    ``leak_threshold`` (seconds) turns on leak detection. Everything is checked before anything
    changes: an error leaves ``obj`` as it was.
    """
    found = adapter_of(obj)
    if found is None:
        raise TypeError(
            f"poolwatch.instrument({name!r}): cannot instrument a {type(obj).__module__}."
            f"{type(obj).__qualname__}; supported: {SUPPORTED}"
        )
    module, function = found
    if module == "poolwatch.instrument.sqlalchemy" and _on_nullpool(obj):
        module, function = "poolwatch.instrument.sqlalchemy_nullpool", "instrument_nullpool"
    adapter: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return adapter(obj, name=name, registry=registry, leak_threshold=leak_threshold, **options)


def _on_nullpool(obj: object) -> bool:
    """An engine (sync or async) whose pool is a NullPool."""
    pool = getattr(getattr(obj, "sync_engine", obj), "pool", None)
    return any(cls.__name__ == "NullPool" for cls in type(pool).__mro__)


_REDIS_ADAPTERS: Final = {"instrument_redis", "instrument_redis_async"}


@overload
def instrument_redis(
    client_or_pool: redis.Redis | redis.ConnectionPool,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = ...,
    counts_from: Recorder | None = None,
    server: str | None = None,
    holders: int = ...,
) -> RedisInstrumentation: ...


@overload
def instrument_redis(
    client_or_pool: object,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    clock: Callable[[], float] = ...,
    counts_from: Recorder | None = None,
    server: str | None = None,
) -> Instrumentation: ...


def instrument_redis(
    client_or_pool: object,
    *,
    name: str,
    registry: CollectorRegistry | None = None,
    leak_threshold: float | None = None,
    **options: Any,
) -> Any:
    """Export the metrics of a redis-py client's or pool's connections, sync or ``redis.asyncio``."""
    found = adapter_of(client_or_pool)
    if found is None or found[1] not in _REDIS_ADAPTERS:
        raise TypeError(
            f"poolwatch.instrument_redis({name!r}): {type(client_or_pool).__name__} is not a redis-py "
            "client or connection pool (redis.Redis, redis.ConnectionPool, redis.asyncio.Redis, "
            "redis.asyncio.ConnectionPool, or their Blocking pools)"
        )
    module, function = found
    adapter: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return adapter(client_or_pool, name=name, registry=registry, leak_threshold=leak_threshold, **options)
