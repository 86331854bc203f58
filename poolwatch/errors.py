"""The exception tree, and the one place where driver errors become poolwatch errors.

Callers catch what they can act on: ``DatabaseUnavailableError`` (retry later),
``AuthenticationFailedError`` (fix credentials), ``PoolExhaustedError`` (shed load or grow the pool),
``TransactionFailedError`` (retry the transaction when ``retryable``). The original driver error is
kept as ``__cause__`` (``raise ... from exc``). Messages carry the first line of the driver's message
only (SQLAlchemy's full text includes statement parameters, which may hold secrets), with any URL
password or ``password=`` value in it masked. The driver modules are imported when an error is
translated, not with this module, which the command line and ``import poolwatch`` load at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
import sys
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

Reason = Literal[
    "auth", "refused", "timeout", "dns", "reset", "too_many_connections", "pool_timeout", "other"
]

# SQLSTATE classes and codes (PostgreSQL appendix A) that decide what a caller can do.
_AUTH_SQLSTATES: Final = frozenset({"28000", "28P01"})
_RETRYABLE_TX_SQLSTATES: Final = frozenset({"40001", "40P01"})  # serialization, deadlock
_UNAVAILABLE_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
_TOO_MANY_CONNECTIONS_SQLSTATE: Final = "53300"  # too_many_connections ("sorry, too many clients")

# MySQL / MariaDB error numbers (the first argument of a PyMySQL or mysqlclient error).
_MYSQL_REASONS: Final[dict[int, Reason]] = {
    1044: "auth",  # access denied to the database
    1045: "auth",  # access denied for user
    1698: "auth",  # access denied (unix_socket / auth plugin)
    1040: "too_many_connections",
    1203: "too_many_connections",  # max_user_connections
    2005: "dns",  # unknown server host
    2006: "reset",  # server has gone away
    2013: "reset",  # lost connection during query
    2055: "reset",  # lost connection at ... system error
    4031: "reset",  # disconnected by the server because of inactivity (MySQL 8.0.24+)
    1927: "reset",  # connection was killed (MariaDB)
}
_MYSQL_RETRYABLE_TX: Final = frozenset({1213, 1205})  # deadlock, lock wait timeout

# libpq reports connection failures only as text; these fragments are stable across versions 10-17.
_MESSAGE_REASONS: Final[tuple[tuple[str, Reason], ...]] = (
    ("password authentication failed", "auth"),
    ("authentication failed", "auth"),
    ("no password supplied", "auth"),
    ("wrongpass", "auth"),
    ("noauth", "auth"),
    ("invalid username-password", "auth"),
    ("could not translate host name", "dns"),
    ("name or service not known", "dns"),
    ("temporary failure in name resolution", "dns"),
    ("nodename nor servname", "dns"),
    ("error -2 connecting", "dns"),
    ("error -3 connecting", "dns"),
    ("too many connections", "too_many_connections"),
    ("too many clients", "too_many_connections"),
    ("max number of clients reached", "too_many_connections"),  # Redis maxclients
    ("connection refused", "refused"),
    ("timeout expired", "timeout"),
    ("timed out", "timeout"),
    ("server closed the connection unexpectedly", "reset"),
    ("connection reset", "reset"),
    ("connection already closed", "reset"),
    ("terminating connection", "reset"),
    ("ssl syscall error", "reset"),
    ("eof detected", "reset"),
    ("connection closed by server", "reset"),
    ("connection not open", "reset"),
)
# asyncio's create_connection (asyncpg, redis.asyncio) to a name with several addresses (::1 and
# 127.0.0.1) that all fail raises a plain OSError("Multiple exceptions: [Errno 111] Connect call
# failed ('::1', ...), [Errno 111] ...") naming each attempt's errno only.
_MULTIPLE: Final = "multiple exceptions: "
_ERRNO_REASONS: Final[tuple[tuple[str, Reason], ...]] = (
    (f"[errno {errno.ECONNREFUSED}]", "refused"),
    (f"[errno {errno.ETIMEDOUT}]", "timeout"),
    (f"[errno {errno.ECONNRESET}]", "reset"),
)


@functools.cache
def _drivers() -> tuple[ModuleType, ModuleType]:
    """``sqlalchemy.exc`` and ``redis.exceptions``, imported on first use."""
    import redis.exceptions as redis_exc  # noqa: PLC0415 - see the module docstring
    import sqlalchemy.exc as sa_exc  # noqa: PLC0415

    return sa_exc, redis_exc


def _type_reasons() -> tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Reason], ...]:
    """The exception types that say why, from the driver modules already loaded only (an error of a
    driver that is not loaded cannot occur): a library-mode process may not have them installed."""
    return _type_reasons_of(sys.modules.get("sqlalchemy.exc"), sys.modules.get("redis.exceptions"))


@functools.cache
def _type_reasons_of(
    sa_exc: ModuleType | None, redis_exc: ModuleType | None
) -> tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Reason], ...]:
    # Checked in order: SQLAlchemy's pool TimeoutError is not the builtin TimeoutError.
    reasons: list[tuple[type[BaseException] | tuple[type[BaseException], ...], Reason]] = []
    if sa_exc is not None:
        reasons.append((sa_exc.TimeoutError, "pool_timeout"))
    reasons.append((TimeoutError, "timeout"))
    if redis_exc is not None:
        reasons += [(redis_exc.TimeoutError, "timeout"), (redis_exc.AuthenticationError, "auth")]
    reasons += [
        (socket.gaierror, "dns"),
        (ConnectionRefusedError, "refused"),
        ((ConnectionResetError, BrokenPipeError), "reset"),
    ]
    return tuple(reasons)


class PoolwatchError(Exception):
    """Root of every error poolwatch raises."""

    retryable: bool = False
    reason: Reason = "other"


class ConfigError(PoolwatchError):
    """The configuration (file, environment or flags) is invalid. The message is one line."""


class SessionError(PoolwatchError):
    """Talking to a database or Redis through a session or client failed."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason = "other",
        retryable: bool | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.sqlstate = sqlstate
        if retryable is not None:
            self.retryable = retryable


class DatabaseUnavailableError(SessionError):
    """Connection refused, reset, timed out or host unknown. Retry later."""

    retryable = True


class AuthenticationFailedError(SessionError):
    """The server rejected the credentials. Retrying will not help."""


class PoolExhaustedError(SessionError):
    """No pooled connection became free within the pool timeout (QueuePool limit reached)."""

    retryable = True


class TransactionFailedError(SessionError):
    """The transaction was rolled back; ``retryable`` for deadlocks and serialization failures."""


class QueryFailedError(SessionError):
    """The server rejected a statement (constraint, syntax, permission, ...)."""


class CallTimeoutError(PoolwatchError):
    """A bounded call (a probe, a census, a reaper run) did not finish within its timeout."""

    retryable = True
    reason: Reason = "timeout"


def first_line(text: object, limit: int = 300) -> str:
    """The first line of an error text, masked and shortened: enough to act on, nothing that leaks."""
    from poolwatch.masking import mask_text  # noqa: PLC0415 - instrument() loads errors, never this

    line = mask_text(str(text).strip().splitlines()[0]) if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def reason_of(exc: BaseException) -> Reason:
    """Why a connection attempt or a probe failed, as a bounded metric label value.

    A driver error that says nothing itself (redis.asyncio's "network:ConnectionError", a wrapper)
    is explained by the error it was raised from: the chain of causes is followed a few steps.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        reason = _own_reason(seen)
        if reason != "other":
            return reason
        seen = seen.__cause__ or seen.__context__
    return "other"


def sqlstate_of(exc: object) -> str | None:
    """The SQLSTATE of a PostgreSQL driver error: psycopg2's ``pgcode``, psycopg 3's and asyncpg's
    ``sqlstate``; None for anything else."""
    code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else None


def _own_reason(exc: BaseException) -> Reason:
    if isinstance(exc, PoolwatchError):
        return exc.reason
    for types, reason in _type_reasons():
        if isinstance(exc, types):
            return reason
    orig = getattr(exc, "orig", None)
    sqlstate = sqlstate_of(orig) or sqlstate_of(exc)
    if sqlstate in _AUTH_SQLSTATES:
        return "auth"
    if sqlstate == _TOO_MANY_CONNECTIONS_SQLSTATE:
        return "too_many_connections"
    mysql_reason = _MYSQL_REASONS.get(mysql_code(orig if orig is not None else exc) or 0)
    if mysql_reason is not None:
        return mysql_reason
    text = f"{exc} {orig or ''}".lower()
    fragments = _ERRNO_REASONS if isinstance(exc, OSError) and text.startswith(_MULTIPLE) else ()
    for fragment, reason in (*_MESSAGE_REASONS, *fragments):
        if fragment in text:
            return reason
    return "other"


def mysql_code(exc: object) -> int | None:
    """The error number of a PyMySQL or mysqlclient error (``args[0]``), None for anything else."""
    module = type(exc).__module__
    if not module.startswith(("pymysql", "MySQLdb")):
        return None
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def translate(exc: BaseException, *, target: str = "") -> PoolwatchError | None:
    """Map a SQLAlchemy, psycopg2 or redis-py error to a poolwatch error; None if it is not one."""
    if isinstance(exc, PoolwatchError):
        return exc
    sa_exc, redis_exc = _drivers()
    prefix = f"{target}: " if target else ""
    if isinstance(exc, sa_exc.TimeoutError):
        return PoolExhaustedError(f"{prefix}pool exhausted: {first_line(exc)}", reason="pool_timeout")
    if isinstance(exc, redis_exc.RedisError):
        return _translate_redis(exc, prefix)
    if isinstance(exc, sa_exc.DBAPIError):
        return _translate_dbapi(exc, prefix)
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return QueryFailedError(f"{prefix}{first_line(exc)}")
    return None


def _translate_dbapi(exc: Any, prefix: str) -> PoolwatchError:
    orig = exc.orig
    sqlstate = sqlstate_of(orig)
    message = f"{prefix}{first_line(orig if orig is not None else exc)}"
    if sqlstate in _RETRYABLE_TX_SQLSTATES or mysql_code(orig) in _MYSQL_RETRYABLE_TX:
        return TransactionFailedError(message, retryable=True, sqlstate=sqlstate)
    reason = reason_of(exc)
    if reason == "auth":
        return AuthenticationFailedError(message, reason="auth", sqlstate=sqlstate)
    if exc.connection_invalidated or sqlstate in _UNAVAILABLE_SQLSTATES or reason != "other":
        return DatabaseUnavailableError(message, reason=reason, sqlstate=sqlstate)
    if isinstance(exc, _drivers()[0].OperationalError) and sqlstate is None:
        # libpq failures without a SQLSTATE are connection-level by construction.
        return DatabaseUnavailableError(message, reason="other")
    if sqlstate is not None and sqlstate.startswith("40"):
        return TransactionFailedError(message, retryable=False, sqlstate=sqlstate)
    return QueryFailedError(message, sqlstate=sqlstate)


def _translate_redis(exc: BaseException, prefix: str) -> PoolwatchError:
    redis_exc = _drivers()[1]
    message = f"{prefix}{first_line(exc)}"
    if isinstance(exc, redis_exc.AuthenticationError):
        return AuthenticationFailedError(message, reason="auth")
    if isinstance(exc, redis_exc.WatchError):
        return TransactionFailedError(message, retryable=True)
    if isinstance(exc, redis_exc.ConnectionError | redis_exc.TimeoutError):
        reason = reason_of(exc)
        if reason == "auth":
            return AuthenticationFailedError(message, reason="auth")
        return DatabaseUnavailableError(message, reason="refused" if reason == "other" else reason)
    if reason_of(exc) == "auth":
        return AuthenticationFailedError(message, reason="auth")
    return QueryFailedError(message)


@contextlib.contextmanager
def translating(target: str = "") -> Iterator[None]:
    """Re-raise driver errors as poolwatch errors (``raise ... from exc``); others pass untouched."""
    try:
        yield
    except Exception as exc:
        translated = translate(exc, target=target)
        if translated is None or translated is exc:
            raise
        raise translated from exc
