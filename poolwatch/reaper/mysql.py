"""Killing idle MySQL / MariaDB sessions the policy chose, each re-checked right before its kill.

MySQL has no conditional kill: ``KILL CONNECTION`` takes an id and nothing else. So right before each
kill the reaper reads that one connection again (processlist row and InnoDB transaction) and checks
its identity and every condition: same user, same client ``host:port`` (an address pins one TCP
connection), same default database, still ``Sleep`` (and with or without an open transaction, as
decided) past the timeout, not poolwatch's, and this connection still holds the lease (``GET_LOCK``).
Only then is it killed, by ``KILL CONNECTION id`` or through a stored procedure (``CALL
mysql.rds_kill(id)`` on managed servers).

What remains is one round trip: between that read and the kill (under a millisecond on a LAN) the
session may start a statement, which the kill then interrupts. The id cannot have moved to another
session in that time: connection ids only grow until the server restarts, and a restart would also
end this connection, so the kill could not be sent. Sessions the server cannot show in full are
never victims: no default database, or superuser status unreadable (``mysql.user`` not granted).
The user poolwatch logs in as is never reaped (that covers every replica's pools and leases, whose
program names the server may not know), nor are this process's own connection ids.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from poolwatch.census.mysql import IDLE_COMMAND, read
from poolwatch.database import mysql_connect_args
from poolwatch.errors import first_line
from poolwatch.jobs import NO_BACKOFF
from poolwatch.reaper.audit import AuditRecord, Candidates
from poolwatch.reaper.job import autocommit_connect, protected_names, session_reaper_job
from poolwatch.reaper.lease import MYSQL_FENCE, MySQLLease
from poolwatch.reaper.own import BACKENDS, OwnBackends
from poolwatch.reaper.policy import CLIENT_BACKEND, ReaperPolicy, Session, choose_victims, host_of, unrecorded
from poolwatch.urls import sqlalchemy_url

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

    from sqlalchemy.engine import Connection, Engine

    from poolwatch.census.mysql import Thread
    from poolwatch.config import TargetSettings
    from poolwatch.jobs import Backoff
    from poolwatch.metrics import ReaperMetrics
    from poolwatch.reaper.audit import AuditLog
    from poolwatch.reaper.job import ReaperJob
    from poolwatch.reaper.policy import Victim

log = logging.getLogger(__name__)

# Readable with a column grant (deploy/sql/mysql-grants.sql, mariadb-grants.sql); a user with SUPER
# on any host counts.
SUPERUSERS_SQL: Final = "SELECT DISTINCT User FROM mysql.user WHERE Super_priv = 'Y'"
RECHECK_SQL: Final = f"""
SELECT p.USER, p.HOST, p.DB, p.COMMAND, p.TIME, t.trx_mysql_thread_id IS NOT NULL, {MYSQL_FENCE}
FROM information_schema.PROCESSLIST AS p
LEFT JOIN information_schema.INNODB_TRX AS t ON t.trx_mysql_thread_id = p.ID
WHERE p.ID = %(id)s
"""  # noqa: S608 - MYSQL_FENCE is a constant


def superusers(connection: Connection) -> frozenset[str] | None:
    """Users holding SUPER, or None when ``mysql.user`` cannot be read (then nobody is a victim)."""
    try:
        rows = connection.exec_driver_sql(SUPERUSERS_SQL).all()
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        return None
    return frozenset(str(row[0]) for row in rows)


def session_of(thread: Thread, now: dt.datetime, supers: frozenset[str] | None) -> Session:
    """A processlist thread as the shared policy judges it. MySQL shows no connect time: the
    connection is identified by id, user and ``host:port`` at kill time instead, and
    ``backend_start`` carries the start of its current state only so that it is not "hidden"."""
    since = None if thread.seconds is None else now - dt.timedelta(seconds=thread.seconds)
    return Session(
        pid=thread.id,
        backend_type=CLIENT_BACKEND if thread.client else thread.command,
        backend_start=since,
        user=thread.user,
        database=thread.database,
        application=thread.program,
        state=thread.state,
        state_change=since,
        superuser=None if supers is None or thread.user is None else thread.user in supers,
        client_addr=thread.host,
        query=thread.info,
        client_host=host_of(thread.host),
    )


class MySQLReaper:
    """One reaper run on a MySQL / MariaDB target: lease, snapshot, choose, re-check and kill, record."""

    def __init__(
        self,
        target: str,
        lease: MySQLLease,
        policy: ReaperPolicy,
        audit: AuditLog,
        own: OwnBackends,
        *,
        dry_run: bool,
        kill_procedure: str | None = None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.target = target
        self.lease = lease
        self.policy = policy
        self.audit = audit
        self.own = own
        self.dry_run = dry_run
        self.kill_procedure = kill_procedure
        self._on_error = on_error
        self._recorded: set[Hashable] = set()
        self._warned_superusers = False
        self.candidates = Candidates()

    def run(self) -> int:
        """Reap once; the number of sessions killed (or, in dry run, recorded as candidates)."""
        connection = self.lease.hold()
        if connection is None:
            self.candidates = Candidates()  # another replica decides
            return 0
        snapshot = read(connection)
        supers = superusers(connection)
        if supers is None and not self._warned_superusers:
            log.warning(
                "reaper %s: cannot read mysql.user, so no session can be judged: "
                "GRANT SELECT (User, Super_priv) ON mysql.user (deploy/sql/*-grants.sql)",
                self.target,
            )
        self._warned_superusers = supers is None
        sessions = [session_of(thread, snapshot.now, supers) for thread in snapshot.threads]
        own = self.own.pids() | {snapshot.own_id}
        if self.dry_run:
            everyone = choose_victims(
                sessions, replace(self.policy, max_per_run=len(sessions)), snapshot.now, own
            )
            self.candidates = Candidates.of(everyone, self._record)
            victims, self._recorded = unrecorded(
                everyone,
                lambda v: (v.session.pid, v.session.client_addr),
                self._recorded,
                self.policy.max_per_run,
            )
        else:
            victims = choose_victims(sessions, self.policy, snapshot.now, own)
            victims = [v for v in victims if self._kill(connection, v, own)]
        self.audit.record_all([self._record(victim) for victim in victims])
        return len(victims)

    def _kill(self, connection: Connection, victim: Victim, own: frozenset[int]) -> bool:
        if not self.still_a_victim(connection, victim, own):
            log.info(
                "reaper %s: connection %d changed before the kill; left alone",
                self.target,
                victim.session.pid,
            )
            return False
        try:
            if self.kill_procedure is not None:
                connection.exec_driver_sql(f"CALL {self.kill_procedure}(%(id)s)", {"id": victim.session.pid})
            else:
                connection.exec_driver_sql("KILL CONNECTION %(id)s", {"id": victim.session.pid})
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            # Refused for this one session (not its owner, no CONNECTION ADMIN): count it, go on.
            self._on_error()
            log.warning(
                "reaper %s: killing connection %d failed: %s",
                self.target,
                victim.session.pid,
                first_line(exc.orig or exc),
            )
            return False
        return True

    def still_a_victim(self, connection: Connection, victim: Victim, own: frozenset[int]) -> bool:
        """The victim's connection, read again now, is the same connection in the same condition, and
        this connection still holds the lease."""
        session = victim.session
        row = connection.exec_driver_sql(RECHECK_SQL, {"id": session.pid, **self.lease.params}).first()
        if row is None or session.pid in own:
            return False
        user, host, database, command, seconds, in_transaction, fenced = row
        timeout = self.policy.timeout_for(victim.reason)
        return bool(
            fenced
            and (user, host, database) == (session.user, session.client_addr, session.database)
            and command == IDLE_COMMAND
            and bool(in_transaction) == (victim.reason == "idle_in_transaction")
            and timeout is not None
            and seconds is not None
            and float(seconds) >= timeout
        )

    def _record(self, victim: Victim) -> AuditRecord:
        session = victim.session
        return AuditRecord.make(
            target=self.target,
            kind="mysql",
            pid=session.pid,
            username=session.user,
            database=session.database,
            application=session.application,
            client_addr=session.client_addr,
            state=session.state,
            idle_seconds=victim.idle_seconds,
            query=session.query,
            backend_start=None,  # MySQL does not show when a connection was opened
            reason=victim.reason,
            mode="dry_run" if self.dry_run else "enforce",
        )


def lease_engine(target: TargetSettings) -> Engine:
    """An engine without a pool for the lease connection, whose reads and writes time out with the
    reaper run, named like the target's pool."""
    return create_engine(
        sqlalchemy_url(target.url, target.password),
        poolclass=NullPool,
        connect_args=mysql_connect_args(target, read_timeout=target.reaper.timeout),
    )


def policy_for(target: TargetSettings, protected: Iterable[str]) -> ReaperPolicy:
    """The target's policy, with the user poolwatch logs in as excluded: its sessions (every replica's
    pools and leases) are poolwatch's own, whatever program name the server shows for them."""
    policy = ReaperPolicy.from_settings(target.reaper, protected=protected)
    own_user = sqlalchemy_url(target.url, None).username
    if not own_user:
        return policy
    return replace(policy, exclude_users=policy.exclude_users | {own_user})


def build_mysql_reaper(
    target: TargetSettings,
    audit: AuditLog,
    metrics: ReaperMetrics,
    own: OwnBackends = BACKENDS,
    others: Iterable[TargetSettings] = (),
    backoff: Backoff = NO_BACKOFF,
) -> ReaperJob:
    """The reaper job of a MySQL / MariaDB target."""
    engine = lease_engine(target)
    lease = MySQLLease(target.name, autocommit_connect(engine, target.name), metrics.leader, own)
    reaper = MySQLReaper(
        target.name,
        lease,
        policy_for(target, protected_names(target, others)),
        audit,
        own,
        dry_run=target.reaper.dry_run,
        kill_procedure=target.reaper.kill_procedure,
        on_error=metrics.errors.labels(target.name).inc,
    )
    return session_reaper_job(target, reaper, engine, audit, metrics, backoff)
