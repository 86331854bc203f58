"""Engines and Redis clients per target (created once, shared by threads), and the session lifecycle.

``Database`` owns one SQLAlchemy engine; ``session_scope()`` commits on success, rolls back on any
error and always closes; ``get_session()`` is the same as a generator, for FastAPI's ``Depends``.
``RedisDatabase`` owns one redis-py client (itself a thread-safe pool). Driver errors leave both as
poolwatch errors (``poolwatch.errors.translating``); ``ping()`` and ``health()`` serve readiness
probes (``health.py``). The module-level ``session_scope()``, ``get_session()`` and ``get_redis()`` use
a default built once, under a lock, from ``DATABASE_URL`` / ``POSTGRES_*`` / ``REDIS_URL`` or the
``POOLWATCH_CONFIG`` file; with none of them they raise ``ConfigError`` (SQLite is used only when
asked for, as ``DATABASE_URL=sqlite:///...`` or ``Database.from_url``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine

from poolwatch import health
from poolwatch.config import POSTGRES_VARIABLES, PoolSettings, TargetSettings, load_settings
from poolwatch.errors import ConfigError, translating
from poolwatch.jobs import BoundedCall
from poolwatch.urls import sqlalchemy_url

if TYPE_CHECKING:
    from collections.abc import Collection, Generator, Iterator, Mapping

    import redis
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from poolwatch.health import Health

log = logging.getLogger(__name__)


def engine_options(target: TargetSettings) -> dict[str, Any]:
    """``create_engine`` keyword arguments for a SQL target's pool settings."""
    pool: PoolSettings = target.pool
    options: dict[str, Any] = {
        "pool_size": pool.size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.timeout,
        "pool_pre_ping": pool.pre_ping,
        "pool_recycle": -1 if pool.recycle is None else pool.recycle,
    }
    if target.kind == "postgres":
        options["connect_args"] = {
            # libpq rounds down and treats values under 2 as 2.
            "connect_timeout": max(2, int(pool.connect_timeout)),
            "application_name": target.application_name,
            # A peer that vanished (failover, cut cable) is noticed in seconds, not hours.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    elif target.kind == "mysql":
        options["connect_args"] = mysql_connect_args(target)
    elif target.kind == "sqlite":
        options["connect_args"] = {"timeout": pool.connect_timeout, "check_same_thread": False}
    return options


def mysql_connect_args(target: TargetSettings, *, read_timeout: float | None = None) -> dict[str, Any]:
    """Driver arguments of a MySQL/MariaDB connection: connect timeout, and the pool's name as the
    ``program_name`` connection attribute (PyMySQL; mysqlclient has no way to set it)."""
    args: dict[str, Any] = {"connect_timeout": max(1, int(target.pool.connect_timeout))}
    if sqlalchemy_url(target.url, None).drivername == "mysql+pymysql":
        args["program_name"] = target.application_name
    if read_timeout is not None:
        # A hung server cannot hold a reaper run: every read and write gives up after this.
        args["read_timeout"] = args["write_timeout"] = max(1, int(read_timeout))
    return args


def create_target_engine(target: TargetSettings) -> Engine:
    """The one engine poolwatch keeps for a SQL target."""
    if target.kind in ("redis", "pgbouncer"):
        raise ConfigError(f"targets.{target.name}: a {target.kind} target has no SQL engine")
    if target.kind == "sqlite":
        _ensure_sqlite_directory(target)
    try:
        return create_engine(sqlalchemy_url(target.url, target.password), **engine_options(target))
    except ImportError as exc:  # the URL's driver is not installed
        extra = " (pip install 'poolwatch[mysql]')" if target.kind == "mysql" else ""
        raise ConfigError(f"targets.{target.name}.url: driver {exc.name} is not installed{extra}") from None


def _ensure_sqlite_directory(target: TargetSettings) -> None:
    # Validation admitted a missing directory only when it is poolwatch's state directory
    # (config.check_sqlite_directory): that one is made here, private to its user.
    database = sqlalchemy_url(target.url, target.password).database
    if database and not database.startswith("file:") and not Path(database).parent.is_dir():
        try:
            Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"targets.{target.name}.url: cannot create the directory for {database}: {exc.strerror}"
            ) from None


def create_target_redis(target: TargetSettings) -> redis.Redis:
    """The one redis-py client poolwatch keeps for a Redis target (its pool is thread-safe)."""
    if target.kind != "redis":
        raise ConfigError(f"targets.{target.name}: a {target.kind} target has no Redis client")
    import redis  # noqa: PLC0415 - an application without Redis never loads redis-py

    pool = target.pool
    password = target.password.get_secret_value() if target.password else None
    client: redis.Redis = redis.Redis.from_url(
        target.url,
        password=password,
        socket_connect_timeout=pool.connect_timeout,
        socket_timeout=target.probe.timeout,
        socket_keepalive=True,
        health_check_interval=int(pool.keepalive) if pool.keepalive else 0,
        client_name=target.application_name,
        max_connections=pool.size + pool.max_overflow,
    )
    return client


def select_one(engine: Engine) -> None:
    """``SELECT 1`` on a connection checked out of ``engine``'s pool: a ping that goes where the
    application's queries go (a stale pooled connection is replaced by pre-ping first)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1").scalar()
        # Nothing to keep: end the implicit transaction here so the pool's reset is free.
        connection.rollback()


class Database:
    """One shared SQLAlchemy engine and the session lifecycle around it.

    Safe to share between threads: the engine's pool is, and each ``session_scope()`` makes its own
    ``Session``. ``dispose()`` closes the pool's connections; it is safe to call twice.
    """

    def __init__(self, engine: Engine, *, name: str = "default") -> None:
        from sqlalchemy.orm import sessionmaker  # noqa: PLC0415 - the ORM only for sessions

        self.name = name
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._ping_call = BoundedCall(f"ping:{name}")

    @classmethod
    def from_target(cls, target: TargetSettings) -> Database:
        return cls(create_target_engine(target), name=target.name)

    @classmethod
    def from_url(cls, url: str, *, name: str = "default", **engine_kwargs: Any) -> Database:
        """A Database on any SQLAlchemy URL (``sqlite:///app.db`` included), with ``create_engine``'s
        keyword arguments."""
        return cls(create_engine(url, **engine_kwargs), name=name)

    def ping(self, *, timeout: float = 5.0) -> float:
        """``SELECT 1`` through the pool; its round trip in seconds, checkout included. Raises a
        poolwatch error (``DatabaseUnavailableError``, ``CallTimeoutError`` after ``timeout``, ...)."""
        return health.ping_within(self._select_one, self._ping_call, timeout)

    def health(self, *, timeout: float = 5.0, saturation: float = 1.0) -> Health:
        """For a readiness probe (never raises): the pool is saturated when ``saturation`` of its
        connections (all, by default) are in use, and then not pinged; otherwise ``ping()``."""
        usage = health.sql_pool_usage(self.engine.pool)
        return health.check(self._select_one, self._ping_call, usage, timeout=timeout, saturation=saturation)

    def _select_one(self) -> None:
        select_one(self.engine)

    @contextlib.contextmanager
    def session_scope(self) -> Iterator[Session]:
        """A transactional scope: commit on success, roll back on any error, always close."""
        session = self._sessions()
        try:
            with translating(self.name):
                yield session
                session.commit()
        except BaseException:
            _rollback_quietly(session)
            raise
        finally:
            session.close()

    def get_session(self) -> Generator[Session, None, None]:
        """``session_scope()`` as a generator, for ``Depends(db.get_session)`` in FastAPI."""
        with self.session_scope() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database(name={self.name!r}, url={self.engine.url!r})"


def _rollback_quietly(session: Session) -> None:
    # The error that brought us here is the one the caller needs; a rollback on a dead connection
    # would only replace it with "connection already closed".
    try:
        session.rollback()
    except Exception as exc:
        log.debug("rollback after error failed: %s", type(exc).__name__)


class RedisDatabase:
    """One shared redis-py client, with the same scope and dependency helpers as ``Database``."""

    def __init__(self, client: redis.Redis, *, name: str = "redis") -> None:
        self.name = name
        self.client = client
        self._ping_call = BoundedCall(f"ping:{name}")

    @classmethod
    def from_target(cls, target: TargetSettings) -> RedisDatabase:
        return cls(create_target_redis(target), name=target.name)

    @contextlib.contextmanager
    def client_scope(self) -> Iterator[redis.Redis]:
        """The shared client, with redis-py errors translated to poolwatch errors."""
        with translating(self.name):
            yield self.client

    @contextlib.contextmanager
    def transaction_scope(self) -> Iterator[Any]:
        """A MULTI/EXEC pipeline: executed on success, discarded on any error, always reset."""
        with translating(self.name), self.client.pipeline(transaction=True) as pipe:
            yield pipe
            pipe.execute()

    def get_client(self) -> Generator[redis.Redis, None, None]:
        """``client_scope()`` as a generator, for ``Depends(cache.get_client)`` in FastAPI."""
        with self.client_scope() as client:
            yield client

    def ping(self, *, timeout: float = 5.0) -> float:
        """``PING`` through the pool; its round trip in seconds. Raises a poolwatch error."""
        return health.ping_within(self._ping, self._ping_call, timeout)

    def health(self, *, timeout: float = 5.0, saturation: float = 1.0) -> Health:
        """As ``Database.health()``, for the client's connection pool."""
        usage = health.redis_pool_usage(self.client)
        return health.check(self._ping, self._ping_call, usage, timeout=timeout, saturation=saturation)

    def _ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()

    def __repr__(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"RedisDatabase(name={self.name!r}, server={where!r})"


def default_target(kinds: Collection[str], *, environ: Mapping[str, str] | None = None) -> TargetSettings:
    """The target ``poolwatch.session_scope()`` or ``get_redis()`` uses: the first of ``kinds`` in
    the ``POOLWATCH_CONFIG`` file or the environment. Never the embedded SQLite database: a service
    whose ``DATABASE_URL`` is missing must fail, not write its data into a local file."""
    for target in load_settings(environ=environ, embedded=False).targets:
        if target.kind in kinds:
            return target
    if "redis" in kinds:
        raise ConfigError("no Redis configured: set REDIS_URL (redis://host:6379/0) or POOLWATCH_CONFIG")
    raise ConfigError(
        "no database configured: set DATABASE_URL (postgresql://user@host/db, or sqlite:///path for "
        f"SQLite), or {POSTGRES_VARIABLES}, or POOLWATCH_CONFIG"
    )


class _Defaults:
    """The process-wide default Database and RedisDatabase, built on first use from the
    environment (``DATABASE_URL`` / ``POSTGRES_*``, ``REDIS_URL``, ``POOLWATCH_CONFIG``) under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._database: Database | None = None
        self._redis: RedisDatabase | None = None

    def database(self) -> Database:
        if self._database is None:
            with self._lock:
                if self._database is None:
                    self._database = Database.from_target(default_target(("postgres", "mysql", "sqlite")))
        return self._database

    def redis(self) -> RedisDatabase:
        if self._redis is None:
            with self._lock:
                if self._redis is None:
                    self._redis = RedisDatabase.from_target(default_target(("redis",)))
        return self._redis

    def reset(self) -> None:
        with self._lock:
            if self._database is not None:
                self._database.dispose()
            if self._redis is not None:
                self._redis.close()
            self._database = self._redis = None


_defaults = _Defaults()


def get_database() -> Database:
    """The shared default ``Database`` (one per process)."""
    return _defaults.database()


def get_redis_database() -> RedisDatabase:
    """The shared default ``RedisDatabase`` (one per process)."""
    return _defaults.redis()


@contextlib.contextmanager
def session_scope() -> Iterator[Session]:
    """``get_database().session_scope()``."""
    with get_database().session_scope() as session:
        yield session


def get_session() -> Generator[Session, None, None]:
    """A FastAPI dependency yielding a session of the default database."""
    yield from get_database().get_session()


def get_redis() -> Generator[redis.Redis, None, None]:
    """A FastAPI dependency yielding the default shared Redis client."""
    yield from get_redis_database().get_client()


def dispose_defaults() -> None:
    """Close the default engine and client (at application shutdown)."""
    _defaults.reset()
