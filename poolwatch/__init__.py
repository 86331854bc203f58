"""poolwatch: connection-pool health monitoring for SQLAlchemy and Redis, exported to Prometheus.

As a library: ``instrument(engine, name=...)`` / ``instrument_redis(client, name=...)`` export pool
metrics; ``Database`` / ``session_scope()`` / ``get_session()`` give the safe session lifecycle;
``holder("nightly-report")`` and the ``HolderMiddleware`` / ``WSGIHolderMiddleware`` say what holds
the connections; as a daemon: ``poolwatch run --config poolwatch.yaml``.

Every public name loads on first use (PEP 562): ``instrument`` loads SQLAlchemy's pool and
prometheus_client, ``instrument_redis`` redis-py, the session helpers the settings they read, so a
worker process that only instruments its engine pays for nothing the daemon needs, and
``poolwatch --version`` for nothing at all.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any, Final

from poolwatch._version import __version__

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
    from poolwatch.instrument.holder import holder
    from poolwatch.instrument.redis import instrument_redis
    from poolwatch.instrument.sqlalchemy import instrument
    from poolwatch.middleware import HolderMiddleware, WSGIHolderMiddleware

_ERRORS: Final = (
    "AuthenticationFailedError",
    "CallTimeoutError",
    "ConfigError",
    "DatabaseUnavailableError",
    "PoolExhaustedError",
    "PoolwatchError",
    "QueryFailedError",
    "SessionError",
    "TransactionFailedError",
)
_SESSIONS: Final = (
    "Database",
    "RedisDatabase",
    "dispose_defaults",
    "get_database",
    "get_redis",
    "get_redis_database",
    "get_session",
    "session_scope",
)
# Public name -> the module that defines it, imported when the name is first used.
_LAZY: Final = {
    **dict.fromkeys(_ERRORS, "poolwatch.errors"),
    **dict.fromkeys(_SESSIONS, "poolwatch.database"),
    "Health": "poolwatch.health",
    "HolderMiddleware": "poolwatch.middleware",
    "WSGIHolderMiddleware": "poolwatch.middleware",
    "holder": "poolwatch.instrument.holder",
    "instrument": "poolwatch.instrument.sqlalchemy",
    "instrument_redis": "poolwatch.instrument.redis",
}
# What to install when a lazily loaded name needs a package the plain install does not bring.
INSTALL_HINT: Final = {
    "poolwatch.database": "pip install 'poolwatch[daemon]'",
    "poolwatch.health": "pip install 'poolwatch[daemon]'",
    "poolwatch.instrument.redis": "pip install 'poolwatch[redis]'",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'poolwatch' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = INSTALL_HINT.get(module_name, "pip install poolwatch")
        raise ModuleNotFoundError(
            f"poolwatch.{name} needs {exc.name}, which is not installed: {hint}", name=exc.name
        ) from exc
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """``poolwatch.instrument`` is the function, also once its subpackage of the same name is imported
    (the import system sets each loaded subpackage as an attribute of its parent)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "instrument" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AuthenticationFailedError",
    "CallTimeoutError",
    "ConfigError",
    "Database",
    "DatabaseUnavailableError",
    "Health",
    "HolderMiddleware",
    "PoolExhaustedError",
    "PoolwatchError",
    "QueryFailedError",
    "RedisDatabase",
    "SessionError",
    "TransactionFailedError",
    "WSGIHolderMiddleware",
    "__version__",
    "dispose_defaults",
    "get_database",
    "get_redis",
    "get_redis_database",
    "get_session",
    "holder",
    "instrument",
    "instrument_redis",
    "session_scope",
]
