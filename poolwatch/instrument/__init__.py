"""Pool instrumentation: ``instrument(engine, name=...)`` and ``instrument_redis(client, name=...)``.

Hooks record raw facts on the checkout path without locks; a collector per registry turns them into
the ``poolwatch_pool_*`` families when Prometheus scrapes.
"""

from poolwatch.instrument.redis import RedisInstrumentation, instrument_redis
from poolwatch.instrument.sqlalchemy import SQLAlchemyInstrumentation, instrument

__all__ = ["RedisInstrumentation", "SQLAlchemyInstrumentation", "instrument", "instrument_redis"]
