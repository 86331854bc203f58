"""Pool instrumentation: ``instrument(engine, name=...)`` and ``instrument_redis(client, name=...)``.

An adapter per pool library (``sqlalchemy.py``, ``redis.py``) hooks the pool and records raw facts
into a ``Recorder`` (``recorder.py``) on the checkout path, without locks; the collector of each
registry (``collector.py``) turns each recorder's ``Snapshot`` into the ``poolwatch_pool_*`` families
of ``metrics.CATALOGUE`` when Prometheus scrapes. ``instrument_redis`` (and redis-py) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from poolwatch.instrument.sqlalchemy import SQLAlchemyInstrumentation, instrument

if TYPE_CHECKING:
    from poolwatch.instrument.redis import RedisInstrumentation, instrument_redis


def __getattr__(name: str) -> Any:
    if name in ("RedisInstrumentation", "instrument_redis"):
        return getattr(importlib.import_module("poolwatch.instrument.redis"), name)
    raise AttributeError(f"module 'poolwatch.instrument' has no attribute {name!r}")


__all__ = ["RedisInstrumentation", "SQLAlchemyInstrumentation", "instrument", "instrument_redis"]
