"""Terminating PostgreSQL sessions the policy chose, with every condition re-checked at kill time.

The snapshot and the kills run on the lease connection. Each kill is ONE statement that finds the
session again by ``pid`` *and* ``backend_start`` (a pid can be reused by a new session), re-checks
that it is still a non-superuser (unless allowed) client backend of the same database, user and
application, still in an idle state past the timeout measured from ``state_change``, is not one of
ours, and that this connection still holds the reaper lease; only then is ``pg_terminate_backend``
called. If anything changed in between, nothing happens: when unsure, don't kill.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from sqlalchemy.exc import DBAPIError

from poolwatch.errors import first_line
from poolwatch.reaper.audit import AuditRecord
from poolwatch.reaper.lease import FENCE
from poolwatch.reaper.policy import IDLE, IDLE_IN_TRANSACTION, Session, choose_victims, unrecorded

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Hashable

    from sqlalchemy.engine import Connection

    from poolwatch.reaper.audit import AuditLog
    from poolwatch.reaper.lease import PostgresLease
    from poolwatch.reaper.own import OwnBackends
    from poolwatch.reaper.policy import Policy, Victim

log = logging.getLogger(__name__)

SNAPSHOT_SQL: Final = """
SELECT a.pid, a.backend_type, a.backend_start, a.usename, a.datname, a.application_name, a.state,
       a.state_change, r.rolsuper, host(a.client_addr), left(a.query, 200)
FROM pg_stat_activity AS a LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.pid <> pg_backend_pid()
"""

TERMINATE_SQL: Final = f"""
SELECT pg_terminate_backend(a.pid)
FROM pg_stat_activity AS a JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.pid = %(pid)s
  AND a.backend_start = %(backend_start)s
  AND a.backend_type = 'client backend'
  AND a.pid <> pg_backend_pid()
  AND a.pid <> ALL(%(own)s::int[])
  AND a.datname = %(database)s
  AND a.usename = %(user)s
  AND a.application_name = %(application)s
  AND a.state = ANY(%(states)s::text[])
  AND a.state_change <= now() - make_interval(secs => %(timeout)s)
  AND (%(allow_superusers)s OR NOT r.rolsuper)
  AND {FENCE}
"""  # noqa: S608 - FENCE is a constant


def snapshot(connection: Connection) -> tuple[dt.datetime, list[Session]]:
    """The server's clock and every backend it shows us."""
    now = connection.exec_driver_sql("SELECT now()").scalar_one()
    rows = connection.exec_driver_sql(SNAPSHOT_SQL).all()
    sessions = [
        Session(
            pid=r[0],
            backend_type=r[1],
            backend_start=r[2],
            user=r[3],
            database=r[4],
            application=r[5],
            state=r[6],
            state_change=r[7],
            superuser=r[8],
            client_addr=r[9],
            query=r[10],
        )
        for r in rows
    ]
    return now, sessions


def terminate(
    connection: Connection,
    victim: Victim,
    policy: Policy,
    own_pids: frozenset[int],
    lease_params: dict[str, int],
) -> bool:
    """Terminate one victim if it still meets every condition; True if it was signalled."""
    session = victim.session
    states = [IDLE] if victim.reason == "idle" else sorted(IDLE_IN_TRANSACTION)
    params = {
        "pid": session.pid, "backend_start": session.backend_start, "own": sorted(own_pids),
        "database": session.database, "user": session.user, "application": session.application,
        "states": states, "timeout": policy.timeout_for(victim.reason),
        "allow_superusers": policy.allow_superusers, **lease_params,
    }  # fmt: skip
    row = connection.exec_driver_sql(TERMINATE_SQL, params).first()
    return row is not None and bool(row[0])


class PostgresReaper:
    """One reaper run on a PostgreSQL target: lease, snapshot, choose, terminate or not, record."""

    def __init__(
        self,
        target: str,
        lease: PostgresLease,
        policy: Policy,
        audit: AuditLog,
        own: OwnBackends,
        *,
        dry_run: bool,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.target = target
        self.lease = lease
        self.policy = policy
        self.audit = audit
        self.own = own
        self.dry_run = dry_run
        self._on_error = on_error
        self._recorded: set[Hashable] = set()

    def run(self) -> int:
        """Reap once; the number of sessions terminated (or, in dry run, recorded as candidates)."""
        connection = self.lease.hold()
        if connection is None:
            return 0
        now, sessions = snapshot(connection)
        own = self.own.pids()
        if self.dry_run:
            everyone = choose_victims(sessions, replace(self.policy, max_per_run=len(sessions)), now, own)
            victims, self._recorded = unrecorded(
                everyone, lambda v: (v.session.pid, v.session.backend_start), self._recorded,
                self.policy.max_per_run,
            )  # fmt: skip
        else:
            victims = choose_victims(sessions, self.policy, now, own)
        done = 0
        for victim in victims:
            if not self.dry_run and not self._terminate(connection, victim, own):
                continue
            self.audit.record(self._record(victim))
            done += 1
        return done

    def _terminate(self, connection: Connection, victim: Victim, own: frozenset[int]) -> bool:
        try:
            killed = terminate(connection, victim, self.policy, own, self.lease.params)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            # Refused for this one session (say, permission denied): count it, go on with the rest.
            self._on_error()
            log.warning("reaper %s: terminating pid %d failed: %s",
                        self.target, victim.session.pid, first_line(exc.orig or exc))  # fmt: skip
            return False
        if not killed:
            log.info("reaper %s: pid %d changed before the kill; left alone",
                     self.target, victim.session.pid)  # fmt: skip
        return killed

    def _record(self, victim: Victim) -> AuditRecord:
        session = victim.session
        return AuditRecord.make(
            target=self.target, kind="postgres", pid=session.pid, username=session.user,
            database=session.database, application=session.application,
            client_addr=session.client_addr, state=session.state, idle_seconds=victim.idle_seconds,
            query=session.query, backend_start=session.backend_start, reason=victim.reason,
            mode="dry_run" if self.dry_run else "enforce",
        )  # fmt: skip
