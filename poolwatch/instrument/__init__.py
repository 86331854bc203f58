"""Pool instrumentation: ``instrument(pool, name=...)`` and ``instrument_redis(client, name=...)``.

An adapter per pool library (``sqlalchemy.py``, ``redis.py``, ``redis_async.py``,
``psycopg_pool.py``, ``asyncpg.py``, ``psycopg2_pool.py``) hooks the pool and records raw facts
into a ``Recorder`` (``recorder.py``) on the checkout path, without locks; the collector of each
registry (``collector.py``) turns each recorder's ``Snapshot`` into the ``poolwatch_pool_*`` families
of ``metrics.CATALOGUE`` when Prometheus scrapes. ``instrument`` (``dispatch.py``) picks the adapter
from the object's class without importing any pool library; each adapter, and its library, loads on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from poolwatch.instrument.dispatch import instrument, instrument_redis
    from poolwatch.instrument.redis import RedisInstrumentation
    from poolwatch.instrument.sqlalchemy import SQLAlchemyInstrumentation

_LAZY: Final = {
    "instrument": "poolwatch.instrument.dispatch",
    "RedisInstrumentation": "poolwatch.instrument.redis",
    "instrument_redis": "poolwatch.instrument.dispatch",
    "SQLAlchemyInstrumentation": "poolwatch.instrument.sqlalchemy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolwatch.instrument' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["RedisInstrumentation", "SQLAlchemyInstrumentation", "instrument", "instrument_redis"]
