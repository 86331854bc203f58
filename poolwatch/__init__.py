"""poolwatch: connection-pool health monitoring for SQLAlchemy and Redis, exported to Prometheus.

As a library: ``Database`` / ``session_scope()`` / ``get_session()`` give the safe session lifecycle,
``instrument(engine, name=...)`` / ``instrument_redis(client, name=...)`` export pool metrics;
as a daemon: ``poolwatch run --config poolwatch.yaml``.
"""

from poolwatch._version import __version__
from poolwatch.database import (
    Database,
    RedisDatabase,
    dispose_defaults,
    get_database,
    get_redis,
    get_redis_database,
    get_session,
    session_scope,
)
from poolwatch.errors import (
    AuthenticationFailedError,
    CallTimeoutError,
    ConfigError,
    DatabaseUnavailableError,
    PoolExhaustedError,
    PoolwatchError,
    QueryFailedError,
    SessionError,
    TransactionFailedError,
)
from poolwatch.health import Health
from poolwatch.instrument import instrument, instrument_redis

__all__ = [
    "AuthenticationFailedError",
    "CallTimeoutError",
    "ConfigError",
    "Database",
    "DatabaseUnavailableError",
    "Health",
    "PoolExhaustedError",
    "PoolwatchError",
    "QueryFailedError",
    "RedisDatabase",
    "SessionError",
    "TransactionFailedError",
    "__version__",
    "dispose_defaults",
    "get_database",
    "get_redis",
    "get_redis_database",
    "get_session",
    "instrument",
    "instrument_redis",
    "session_scope",
]
