"""The reaper job of one target, and how the daemon builds it from settings.

Each run first delivers audit records waiting in the spool, then reaps (if this replica holds the
lease), then delivers what this run recorded. An unreachable audit database never stops the reaper:
records wait in the spool. While the target's probe backs off after failed logins, a run is deferred:
it reads nothing, terminates nothing and delivers nothing, and gives its lease up without a login (a
PostgreSQL reaper closes the lease session; a Redis lease lapses after its TTL), so that a replica
that can log in takes over.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from poolwatch.database import engine_options
from poolwatch.errors import first_line, translate, translating
from poolwatch.jobs import NO_BACKOFF, TargetJob
from poolwatch.reaper.audit import AUDIT_APPLICATION
from poolwatch.reaper.lease import PostgresLease, RedisLease
from poolwatch.reaper.own import BACKENDS, OwnBackends
from poolwatch.reaper.policy import ReaperPolicy
from poolwatch.reaper.postgres import PostgresReaper
from poolwatch.reaper.redis import RedisReaper
from poolwatch.urls import sqlalchemy_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import redis
    from sqlalchemy.engine import Connection, Engine

    from poolwatch.config import TargetSettings
    from poolwatch.jobs import Backoff, Outcome
    from poolwatch.metrics import ReaperMetrics
    from poolwatch.reaper.audit import AuditLog
    from poolwatch.reaper.mysql import MySQLReaper

log = logging.getLogger(__name__)


class ReaperJob(TargetJob):
    """A scheduled reaper of one target (task ``reaper``). ``reaper`` is the Postgres, MySQL or Redis reaper
    (kept for status and tests); ``reap`` runs it once; ``backoff`` (the target's probe) defers runs
    while logins to the target are held back, and ``step_down`` then gives up the lease."""

    task = "reaper"

    def __init__(
        self,
        target: str,
        reaper: PostgresReaper | RedisReaper | MySQLReaper,
        reap: Callable[[], int],
        audit: AuditLog,
        metrics: ReaperMetrics,
        *,
        interval: float,
        timeout: float,
        close: Callable[[], None] = lambda: None,
        backoff: Backoff = NO_BACKOFF,
        step_down: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(target, interval=interval, timeout=timeout, backoff=backoff)
        self.reaper = reaper
        self._reap = reap
        self._audit = audit
        self._metrics = metrics
        self._close = close
        self._step_down = step_down
        self._failing = ""

    def run(self) -> None:
        self.defer_while_backing_off(before=self._step_down)
        self._audit.try_flush()
        try:
            self._reap()
        finally:
            self._audit.try_flush()

    def record(self, outcome: Outcome) -> None:
        if outcome.error is None:
            if self._failing:
                log.info("reaper of %s works again", self.target)
            self._failing = ""
            return
        self._metrics.errors.labels(self.target).inc()
        message = first_line(translate(outcome.error, target=self.target) or outcome.error)
        if message != self._failing:
            log.warning("reaper of %s failed: %s", self.target, message)
        self._failing = message

    def close(self) -> None:
        self._close()


def lease_engine(target: TargetSettings) -> Engine:
    """An engine without a pool for the lease connection: one session, opened and closed explicitly,
    with a statement timeout so a hung server cannot hold the run past its own timeout."""
    options = engine_options(target)
    connect_args = dict(options.get("connect_args", {}))
    connect_args["application_name"] = target.application_name
    timeout_ms = int(target.reaper.timeout * 1000)
    connect_args["options"] = f"-c statement_timeout={timeout_ms}"
    return create_engine(
        sqlalchemy_url(target.url, target.password), poolclass=NullPool, connect_args=connect_args
    )


def protected_names(target: TargetSettings, others: Iterable[TargetSettings] = ()) -> list[str]:
    """Application names that are poolwatch itself, in this replica or any other: every configured
    target's pool name and the audit connection's."""
    return [AUDIT_APPLICATION, target.application_name, *(t.application_name for t in others)]


def autocommit_connect(engine: Engine, target: str) -> Callable[[], Connection]:
    """How a lease opens its dedicated connection: autocommit, driver errors translated."""

    def connect() -> Connection:
        with translating(target):
            return engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    return connect


def session_reaper_job(
    target: TargetSettings,
    reaper: PostgresReaper | MySQLReaper,
    engine: Engine,
    audit: AuditLog,
    metrics: ReaperMetrics,
    backoff: Backoff = NO_BACKOFF,
) -> ReaperJob:
    """The job of a reaper that works through a lease connection from ``engine`` (PostgreSQL,
    MySQL): closing it releases the lease and the engine."""
    lease = reaper.lease

    def reap() -> int:
        with translating(target.name):
            return reaper.run()

    def close() -> None:
        lease.release()
        engine.dispose()

    metrics.add_target(target.name)
    return ReaperJob(
        target.name,
        reaper,
        reap,
        audit,
        metrics,
        interval=target.reaper.interval,
        timeout=target.reaper.timeout,
        close=close,
        backoff=backoff,
        step_down=lease.release,
    )


def build_postgres_reaper(
    target: TargetSettings,
    audit: AuditLog,
    metrics: ReaperMetrics,
    own: OwnBackends = BACKENDS,
    others: Iterable[TargetSettings] = (),
    backoff: Backoff = NO_BACKOFF,
) -> ReaperJob:
    engine = lease_engine(target)
    lease = PostgresLease(target.name, autocommit_connect(engine, target.name), metrics.leader, own)
    policy = ReaperPolicy.from_settings(target.reaper, protected=protected_names(target, others))
    reaper = PostgresReaper(
        target.name,
        lease,
        policy,
        audit,
        own,
        dry_run=target.reaper.dry_run,
        on_error=metrics.errors.labels(target.name).inc,
    )
    return session_reaper_job(target, reaper, engine, audit, metrics, backoff)


def build_redis_reaper(
    target: TargetSettings,
    client: redis.Redis,
    audit: AuditLog,
    metrics: ReaperMetrics,
    others: Iterable[TargetSettings] = (),
    backoff: Backoff = NO_BACKOFF,
) -> ReaperJob:
    lease = RedisLease(target.name, client, metrics.leader, target.reaper.lease_ttl)
    policy = ReaperPolicy.from_settings(target.reaper, protected=protected_names(target, others))
    reaper = RedisReaper(
        target.name,
        client,
        lease,
        policy,
        audit,
        dry_run=target.reaper.dry_run,
        on_error=metrics.errors.labels(target.name).inc,
    )
    metrics.add_target(target.name)
    return ReaperJob(
        target.name,
        reaper,
        reaper.run,
        audit,
        metrics,
        interval=target.reaper.interval,
        timeout=target.reaper.timeout,
        close=lease.release,
        backoff=backoff,
        step_down=lease.forget,
    )
