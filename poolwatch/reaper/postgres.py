"""Terminating PostgreSQL sessions the policy chose, with every condition re-checked at kill time.

The snapshot and the kills run on the lease connection. Each kill is ONE statement that finds the
session again by ``pid`` *and* ``backend_start`` (a pid can be reused by a new session), re-checks
that it is still a non-superuser (unless allowed) client backend of the same database, user and
application, still in an idle state past the timeout measured from ``state_change``, is not one of
ours, and that this connection still holds the reaper lease; only then is ``pg_terminate_backend``
called. If anything changed in between, nothing happens: when unsure, don't kill.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from sqlalchemy.exc import DBAPIError

from poolwatch.errors import first_line
from poolwatch.reaper.audit import AuditRecord, Candidates
from poolwatch.reaper.lease import FENCE
from poolwatch.reaper.policy import IDLE_IN_TRANSACTION, Session, choose_victims, unrecorded

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

    from sqlalchemy.engine import Connection

    from poolwatch.reaper.audit import AuditLog
    from poolwatch.reaper.lease import PostgresLease
    from poolwatch.reaper.own import OwnBackends
    from poolwatch.reaper.policy import ReaperPolicy, Victim

log = logging.getLogger(__name__)

TERMINATIONS: Final = uuid.uuid5(uuid.NAMESPACE_URL, "poolwatch:reaper:postgres:termination")

SNAPSHOT_SQL: Final = """
SELECT a.pid, a.backend_type, a.backend_start, a.usename, a.datname, a.application_name, a.state,
       a.state_change, r.rolsuper, host(a.client_addr), left(a.query, 200)
FROM pg_stat_activity AS a LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.pid <> pg_backend_pid()
"""

MAY_SIGNAL: Final = (
    "((NOT r.rolsuper OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))"
    " AND (pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE')))"
)

# Every victim of a run in one statement: each row re-checks its own session exactly as a single kill
# would (the same conditions, joined on pid AND backend_start); only rows passing them are signalled.
# One statement instead of one per victim: 90 kills took ~400-650 ms one by one (each a scan of
# pg_stat_activity and pg_locks), a few ms together (README, Benchmarks). A session the server would
# refuse to signal (a superuser's, when we are not one; a role we lack pg_signal_backend or
# membership for) is not signalled but reported (allowed = false): an error raised by one row
# would abort the statement after earlier rows had been signalled, and those kills would go
# unrecorded.
TERMINATE_SQL: Final = f"""
SELECT a.pid, CASE WHEN {MAY_SIGNAL} THEN pg_terminate_backend(a.pid) END, {MAY_SIGNAL}
FROM unnest(%(pids)s::int[], %(backend_starts)s::timestamptz[], %(databases)s::text[],
            %(users)s::text[], %(applications)s::text[], %(reasons)s::text[], %(timeouts)s::float8[])
       AS v(pid, backend_start, datname, usename, application_name, reason, timeout)
JOIN pg_stat_activity AS a ON a.pid = v.pid AND a.backend_start = v.backend_start
JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend'
  AND a.pid <> pg_backend_pid()
  AND a.pid <> ALL(%(own)s::int[])
  AND a.datname = v.datname
  AND a.usename = v.usename
  AND a.application_name = v.application_name
  AND CASE WHEN v.reason = 'idle' THEN a.state = 'idle'
           ELSE a.state = ANY(%(idle_in_transaction)s::text[]) END
  AND a.state_change <= now() - make_interval(secs => v.timeout)
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
            client_host=r[9],
        )
        for r in rows
    ]
    return now, sessions


def terminate(
    connection: Connection,
    victim: Victim,
    policy: ReaperPolicy,
    own_pids: frozenset[int],
    lease_params: dict[str, int],
) -> bool:
    """Terminate one victim if it still meets every condition; True if it was signalled."""
    killed, _refused = terminate_all(connection, [victim], policy, own_pids, lease_params)
    return victim.session.pid in killed


def terminate_all(
    connection: Connection,
    victims: Sequence[Victim],
    policy: ReaperPolicy,
    own_pids: frozenset[int],
    lease_params: dict[str, int],
) -> tuple[set[int], set[int]]:
    """Terminate every victim that still meets every condition, in one statement.

    Returns the pids signalled, and those that met every condition but that the server would not
    let us signal."""
    if not victims:
        return set(), set()
    sessions = [victim.session for victim in victims]
    params = {
        "pids": [s.pid for s in sessions],
        "backend_starts": [s.backend_start for s in sessions],
        "databases": [s.database for s in sessions],
        "users": [s.user for s in sessions],
        "applications": [s.application for s in sessions],
        "reasons": [v.reason for v in victims],
        "timeouts": [policy.timeout_for(v.reason) for v in victims],
        "idle_in_transaction": sorted(IDLE_IN_TRANSACTION),
        "own": sorted(own_pids),
        "allow_superusers": policy.allow_superusers,
        **lease_params,
    }
    rows = connection.exec_driver_sql(TERMINATE_SQL, params).all()
    return {int(row[0]) for row in rows if row[1]}, {int(row[0]) for row in rows if not row[2]}


def _key(victim: Victim) -> tuple[int, dt.datetime | None]:
    return victim.session.pid, victim.session.backend_start


def termination_id(target: str, victim: Victim) -> str:
    """The record id of a session's termination: the same in every replica of ``target``."""
    started = victim.session.backend_start
    start = "" if started is None else started.astimezone(dt.timezone.utc).isoformat()
    return str(uuid.uuid5(TERMINATIONS, f"{target}\x00{victim.session.pid}\x00{start}"))


class PostgresReaper:
    """One reaper run on a PostgreSQL target: lease, snapshot, choose, terminate or not, record."""

    def __init__(
        self,
        target: str,
        lease: PostgresLease,
        policy: ReaperPolicy,
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
        self._signalled: set[tuple[int, dt.datetime | None]] = set()
        self.candidates = Candidates()

    def run(self) -> int:
        """Reap once; the number of sessions terminated (or, in dry run, recorded as candidates)."""
        connection = self.lease.hold()
        if connection is None:
            self.candidates = Candidates()  # another replica decides
            return 0
        now, sessions = snapshot(connection)
        own = self.own.pids()
        if self.dry_run:
            everyone = choose_victims(sessions, replace(self.policy, max_per_run=len(sessions)), now, own)
            self.candidates = Candidates.of(everyone, self._record)
            victims, self._recorded = unrecorded(everyone, _key, self._recorded, self.policy.max_per_run)
        else:
            # A terminated backend stays in pg_stat_activity, idle as before, until it gets the CPU
            # to exit: a moment, or much longer on a loaded server. Signalled again, it would count
            # and be recorded a second time, so sessions this reaper signalled are left out while
            # they are still listed (and forgotten once they are not).
            self._signalled &= {(s.pid, s.backend_start) for s in sessions}
            fresh = [s for s in sessions if (s.pid, s.backend_start) not in self._signalled]
            chosen = choose_victims(fresh, self.policy, now, own)
            # A replica that held the lease before may have signalled some of them, still exiting:
            # their termination is recorded under the same id (audit table, or this spool). Left
            # alone like those signalled here, they are neither signalled nor counted again.
            recorded = self.audit.recorded([termination_id(self.target, victim) for victim in chosen])
            done = [victim for victim in chosen if termination_id(self.target, victim) in recorded]
            self._signalled.update(_key(victim) for victim in done)
            victims = self._terminate_all(connection, [v for v in chosen if v not in done], own)
            self._signalled.update(_key(victim) for victim in victims)
        self.audit.record_all([self._record(victim) for victim in victims])
        return len(victims)

    def _terminate_all(
        self, connection: Connection, victims: list[Victim], own: frozenset[int]
    ) -> list[Victim]:
        """The victims signalled: all in one statement, or one by one if that statement fails (one
        session we may not signal must not spare the others)."""
        try:
            killed, refused = terminate_all(connection, victims, self.policy, own, self.lease.params)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            # Refused in a way MAY_SIGNAL did not foresee: one by one, each error counted. (Sessions
            # the failed statement signalled before the error may be gone and unrecorded.)
            return [victim for victim in victims if self._terminate(connection, victim, own)]
        for victim in victims:
            if victim.session.pid in refused:
                self._on_error()
                log.warning(
                    "reaper %s: not allowed to terminate pid %d (a superuser's session, or "
                    "no pg_signal_backend)",
                    self.target,
                    victim.session.pid,
                )
            elif victim.session.pid not in killed:
                log.info(
                    "reaper %s: pid %d changed before the kill; left alone", self.target, victim.session.pid
                )
        return [victim for victim in victims if victim.session.pid in killed]

    def _terminate(self, connection: Connection, victim: Victim, own: frozenset[int]) -> bool:
        try:
            killed = terminate(connection, victim, self.policy, own, self.lease.params)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            # Refused for this one session (say, permission denied): count it, go on with the rest.
            self._on_error()
            log.warning(
                "reaper %s: terminating pid %d failed: %s",
                self.target,
                victim.session.pid,
                first_line(exc.orig or exc),
            )
            return False
        if not killed:
            log.info("reaper %s: pid %d changed before the kill; left alone", self.target, victim.session.pid)
        return killed

    def _record(self, victim: Victim) -> AuditRecord:
        session = victim.session
        # A termination's record id is the session's own (server-side identity: pid and start),
        # so that however often it is recorded (by a replica that took the lease over while the
        # session was still exiting), the audit table holds it once.
        return AuditRecord.make(
            record_id=None if self.dry_run else termination_id(self.target, victim),
            target=self.target,
            kind="postgres",
            pid=session.pid,
            username=session.user,
            database=session.database,
            application=session.application,
            client_addr=session.client_addr,
            state=session.state,
            idle_seconds=victim.idle_seconds,
            query=session.query,
            backend_start=session.backend_start,
            reason=victim.reason,
            mode="dry_run" if self.dry_run else "enforce",
        )
