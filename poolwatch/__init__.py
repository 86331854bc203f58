"""poolwatch: connection-pool health monitoring for SQLAlchemy and Redis, exported to Prometheus.

As a library: ``instrument(engine, name=...)`` / ``instrument_redis(client, name=...)`` export pool
metrics; ``Database`` / ``session_scope()`` / ``get_session()`` give the safe session lifecycle;
as a daemon: ``poolwatch run --config poolwatch.yaml``.

Importing poolwatch loads SQLAlchemy's pool and prometheus_client only: the session helpers (and the
settings they read), ``instrument_redis`` (and redis-py) load on first use (PEP 562), so a worker
process that only instruments its engine pays for nothing the daemon needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from poolwatch._version import __version__
from poolwatch.errors import (
    AuthenticationFailedError,
    ConfigError,
    DatabaseUnavailableError,
    PoolExhaustedError,
    PoolwatchError,
    QueryFailedError,
    SessionError,
    TransactionFailedError,
)
from poolwatch.instrument import instrument

if TYPE_CHECKING:
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
    from poolwatch.instrument.redis import instrument_redis

# Public name -> the module that defines it, imported when the name is first used.
_LAZY: Final = {
    "Database": "poolwatch.database",
    "RedisDatabase": "poolwatch.database",
    "dispose_defaults": "poolwatch.database",
    "get_database": "poolwatch.database",
    "get_redis": "poolwatch.database",
    "get_redis_database": "poolwatch.database",
    "get_session": "poolwatch.database",
    "session_scope": "poolwatch.database",
    "instrument_redis": "poolwatch.instrument.redis",
}
# What to install when a lazily loaded name needs a package the plain install does not bring.
INSTALL_HINT: Final = {
    "poolwatch.database": "pip install 'poolwatch[daemon]'",
    "poolwatch.instrument.redis": "pip install 'poolwatch[redis]'",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'poolwatch' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"poolwatch.{name} needs {exc.name}, which is not installed: {INSTALL_HINT[module_name]}",
            name=exc.name,
        ) from exc
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuthenticationFailedError",
    "ConfigError",
    "Database",
    "DatabaseUnavailableError",
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
