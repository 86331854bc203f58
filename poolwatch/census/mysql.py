"""MySQL / MariaDB census from ``information_schema.PROCESSLIST`` and ``INNODB_TRX``: the same families
as PostgreSQL's (sessions by state, database, user and program; ages; the oldest open transaction;
``max_connections``), with the ``PROCESS`` privilege alone.

A session is ``idle`` while its command is ``Sleep``, ``idle in transaction`` when it sleeps with an
InnoDB transaction open, ``active`` otherwise. System and replication threads (``system user``, the
event scheduler, ``Binlog Dump``, replica I/O and SQL threads, daemons) are not client sessions and
are not counted. The program name comes from the ``program_name`` connection attribute in
``performance_schema.session_connect_attrs`` when performance_schema is on and readable; MariaDB
ships with it off, and then every session's program is ``""`` (unknown to the server). Ages are the
server's own counters (``TIME``, whole seconds) and clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sqlalchemy.exc import DBAPIError

from poolwatch.census import postgres as pg_census
from poolwatch.errors import translating

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Mapping

    from sqlalchemy.engine import Connection, Engine

    from poolwatch.census.job import Sample
    from poolwatch.config import TargetSettings

log = logging.getLogger(__name__)

SYSTEM_USERS: Final = frozenset({"system user", "event_scheduler", "DELAYED", "unauthenticated user"})
SYSTEM_COMMANDS: Final = frozenset(
    {
        "Daemon",
        "Binlog Dump",
        "Binlog Dump GTID",
        "Register Slave",
        "Slave_IO",
        "Slave_SQL",
        "Slave_worker",
        "Connect",  # a replica's I/O thread, and a client still logging in
    }
)
IDLE_COMMAND: Final = "Sleep"

SESSIONS_SQL: Final = """
SELECT p.ID, p.USER, p.HOST, p.DB, p.COMMAND, p.TIME, LEFT(p.INFO, 200),
       t.trx_mysql_thread_id IS NOT NULL,
       TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) / 1000000
FROM information_schema.PROCESSLIST AS p
LEFT JOIN information_schema.INNODB_TRX AS t ON t.trx_mysql_thread_id = p.ID
"""
PROGRAMS_SQL: Final = """
SELECT PROCESSLIST_ID, ATTR_VALUE FROM performance_schema.session_connect_attrs
WHERE ATTR_NAME = 'program_name'
"""
SERVER_SQL: Final = "SELECT NOW(6), @@max_connections, @@performance_schema, CONNECTION_ID()"


@dataclass(frozen=True, slots=True)
class Thread:
    """One row of the processlist, with its InnoDB transaction and program name."""

    id: int
    user: str | None
    host: str | None
    database: str | None
    command: str | None
    seconds: float | None
    info: str | None
    in_transaction: bool
    transaction_seconds: float | None
    program: str

    @property
    def client(self) -> bool:
        """A client session (not a system, replication or daemon thread)."""
        return (
            self.user is not None
            and self.user not in SYSTEM_USERS
            and self.command is not None
            and self.command not in SYSTEM_COMMANDS
        )

    @property
    def state(self) -> str:
        """The PostgreSQL-style state: idle, idle in transaction, or active."""
        if self.command != IDLE_COMMAND:
            return "active"
        return "idle in transaction" if self.in_transaction else "idle"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one read of the server shows: its clock, limit, own connection id, and threads."""

    now: dt.datetime
    max_connections: int
    own_id: int
    threads: list[Thread]


def read(connection: Connection) -> Snapshot:
    """Every thread the server shows this connection (all of them with ``PROCESS``)."""
    now, limit, performance_schema, own_id = connection.exec_driver_sql(SERVER_SQL).one()
    programs = _programs(connection) if performance_schema else {}
    threads = [
        Thread(
            id=int(row[0]),
            user=row[1],
            host=row[2],
            database=row[3],
            command=row[4],
            seconds=None if row[5] is None else float(row[5]),
            info=row[6],
            in_transaction=bool(row[7]),
            transaction_seconds=None if row[8] is None else float(row[8]),
            program=programs.get(int(row[0]), ""),
        )
        for row in connection.exec_driver_sql(SESSIONS_SQL).all()
    ]
    return Snapshot(now, int(limit), int(own_id), threads)


def _programs(connection: Connection) -> dict[int, str]:
    """program_name by connection id; empty when the table cannot be read (not granted)."""
    try:
        rows = connection.exec_driver_sql(PROGRAMS_SQL).all()
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        log.debug("performance_schema.session_connect_attrs not readable: %s", type(exc.orig).__name__)
        return {}
    return {int(pid): str(value) for pid, value in rows}


def activity(snapshot: Snapshot) -> list[pg_census.Activity]:
    """The client sessions as the shared census sees them (poolwatch's own census one included, as a
    PostgreSQL census counts its own backend)."""
    return [
        pg_census.Activity(
            state=thread.state,
            database=thread.database,
            user=thread.user,
            application=thread.program,
            in_state=thread.seconds,
            in_transaction=thread.transaction_seconds,
        )
        for thread in snapshot.threads
        if thread.client
    ]


class MySQLCensus(pg_census.PostgresCensus):
    """The ``take`` of a MySQL target's census job: the PostgreSQL census's samples from the
    processlist, keeping the oldest idle-in-transaction session as it does (for the status page)."""

    def __call__(self) -> list[Sample]:
        with translating(self._name), self._engine.connect() as connection:
            snapshot = read(connection)
            connection.rollback()
        rows = activity(snapshot)
        self.oldest_idle_in_transaction = pg_census.oldest_idle_in_transaction(rows)
        return pg_census.samples(rows, snapshot.max_connections, self._bounds, self._pools, self._thresholds)


def census(target: TargetSettings, engine: Engine, pools: Mapping[str, str]) -> Callable[[], list[Sample]]:
    """The ``take`` function of a MySQL target's census job."""
    return MySQLCensus(target, engine, pools)
