"""PgBouncer's pool health from its admin console: SHOW POOLS, CLIENTS, STATS, DATABASES, LISTS, CONFIG,
VERSION.

The admin console speaks the PostgreSQL protocol but takes only its own ``SHOW`` commands: no
transactions, no ``SELECT``. So it is reached through one raw psycopg2 connection in autocommit (no
SQLAlchemy engine, whose dialect queries the server on connect), shared by the probe and the stats
job under a lock and opened again after any failure. Values become ``poolwatch_pgbouncer_*`` samples
per database and user; a column an older PgBouncer lacks is simply not exported. With
``census.databases`` or ``census.users`` configured, other names are folded into the empty label value (counts
summed, waits and ages maxed), as the census does. Client application names (SHOW CLIENTS) are chosen
by each client, so only those listed in ``census.applications`` become label values, as in the census.
"""

from __future__ import annotations

import contextlib
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import psycopg2

from poolwatch.census.labels import FOLDED
from poolwatch.errors import AuthenticationFailedError, DatabaseUnavailableError, first_line, reason_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from poolwatch.census.job import Sample
    from poolwatch.config import TargetSettings

# SHOW POOLS column -> state label, for clients and for server connections.
CLIENT_STATES: Final = {
    "cl_active": "active",
    "cl_waiting": "waiting",
    "cl_active_cancel_req": "active_cancel_req",
    "cl_waiting_cancel_req": "waiting_cancel_req",
}
SERVER_STATES: Final = {
    "sv_active": "active",
    "sv_idle": "idle",
    "sv_used": "used",
    "sv_tested": "tested",
    "sv_login": "login",
    "sv_active_cancel": "active_cancel",
    "sv_being_canceled": "being_canceled",
}
# SHOW DATABASES column -> family (per database). PgBouncer 1.24 renamed ``reserve_pool`` to
# ``reserve_pool_size``: either name feeds the same family (a row has only one of them).
DATABASE_COLUMNS: Final = {
    "pool_size": "pgbouncer_database_pool_size",
    "min_pool_size": "pgbouncer_database_min_pool_size",
    "reserve_pool": "pgbouncer_database_reserve_pool_size",
    "reserve_pool_size": "pgbouncer_database_reserve_pool_size",
    "max_connections": "pgbouncer_database_max_connections",
    "current_connections": "pgbouncer_database_current_connections",
    "paused": "pgbouncer_database_paused",
    "disabled": "pgbouncer_database_disabled",
}
# SHOW STATS total column -> (counter family, scale to base units); times are in microseconds.
STATS_COLUMNS: Final = {
    "total_xact_count": ("pgbouncer_transactions", 1.0),
    "total_query_count": ("pgbouncer_queries", 1.0),
    "total_received": ("pgbouncer_received_bytes", 1.0),
    "total_sent": ("pgbouncer_sent_bytes", 1.0),
    "total_xact_time": ("pgbouncer_transaction_seconds", 1e-6),
    "total_query_time": ("pgbouncer_query_seconds", 1e-6),
    "total_wait_time": ("pgbouncer_client_wait_seconds", 1e-6),
    "total_server_assignment_count": ("pgbouncer_server_assignments", 1.0),
    "total_client_parse_count": ("pgbouncer_client_parses", 1.0),
    "total_server_parse_count": ("pgbouncer_server_parses", 1.0),
    "total_bind_count": ("pgbouncer_binds", 1.0),
}
CONFIG_KEYS: Final = {
    "max_client_conn": "pgbouncer_config_max_client_connections",
    "max_user_connections": "pgbouncer_config_max_user_connections",
    "max_db_connections": "pgbouncer_config_max_db_connections",
    "default_pool_size": "pgbouncer_config_default_pool_size",
}
# Families whose folded value is the largest, not the sum.
MAXED: Final = frozenset({"pgbouncer_client_max_wait_seconds"})

Rows = list[dict[str, Any]]


class AdminConsole:
    """One autocommit connection to PgBouncer's admin console, shared under a lock. ``connect`` is
    psycopg2's (tests pass their own)."""

    def __init__(self, target: TargetSettings, connect: Callable[..., Any] = psycopg2.connect) -> None:
        self.name = target.name
        self._target = target
        self._connect = connect
        self._lock = threading.Lock()
        self._connection: Any = None

    def show(self, *what: str) -> dict[str, Rows]:
        """``SHOW`` each of ``what``, rows as dicts. Driver errors become poolwatch errors, and the
        connection is dropped so the next call opens a fresh one."""
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = self._open()
                return {item: self._show(item) for item in what}
            except psycopg2.Error as exc:
                self._drop()
                reason = reason_of(exc)
                message = f"{self.name}: {first_line(exc)}"
                if reason == "auth":
                    raise AuthenticationFailedError(message, reason="auth") from exc
                raise DatabaseUnavailableError(message, reason=reason) from exc

    def _open(self) -> Any:
        target = self._target
        password = target.password.get_secret_value() if target.password else None
        parts = _parts(target.url)
        connection = self._connect(
            **parts,
            password=password,
            connect_timeout=max(2, int(target.pool.connect_timeout)),
            application_name=target.application_name,
        )
        # Before any statement: psycopg2 would otherwise send BEGIN, which the console rejects.
        connection.autocommit = True
        return connection

    def _show(self, what: str) -> Rows:
        with self._connection.cursor() as cursor:
            cursor.execute(f"SHOW {what}")
            columns = [column.name for column in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(psycopg2.Error):
                connection.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def _parts(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - parsing only

    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    parts: dict[str, Any] = {"dbname": parsed.database or "pgbouncer", **dict(parsed.query)}
    if parsed.host:
        parts["host"] = parsed.host
    if parsed.port:
        parts["port"] = parsed.port
    if parsed.username:
        parts["user"] = parsed.username
    return parts


def pgbouncer_check(console: AdminConsole) -> Callable[[], None]:
    """The probe of a PgBouncer target: ``SHOW VERSION`` on the admin console."""

    def check() -> None:
        console.show("VERSION")

    return check


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class Folder:
    """Label values limited to configured names (when any are configured); samples aggregated."""

    def __init__(
        self, databases: Iterable[str] = (), users: Iterable[str] = (), applications: Iterable[str] = ()
    ) -> None:
        self.databases = frozenset(databases)
        self.users = frozenset(users)
        self.applications = frozenset(applications)
        self.values: dict[tuple[str, tuple[str, ...]], float] = {}

    def database(self, name: Any) -> str:
        return str(name) if not self.databases or name in self.databases else FOLDED

    def user(self, name: Any) -> str:
        return str(name) if not self.users or name in self.users else FOLDED

    def application(self, name: Any) -> str:
        """Only configured names: a client sets its own, so they are not bounded otherwise."""
        return str(name) if name in self.applications else FOLDED

    def add(self, family: str, labels: tuple[str, ...], value: float | None) -> None:
        if value is None:
            return
        key = (family, labels)
        if key not in self.values:
            self.values[key] = value
        elif family in MAXED:
            self.values[key] = max(self.values[key], value)
        else:
            self.values[key] += value

    def samples(self) -> list[Sample]:
        return [(family, labels, value) for (family, labels), value in self.values.items()]


def samples(shown: Mapping[str, Rows], folder: Folder) -> list[Sample]:
    """The ``SHOW`` results as ``poolwatch_pgbouncer_*`` samples (family, labels after target, value)."""
    for row in shown.get("POOLS", []):
        _pool(row, folder)
    for row in shown.get("CLIENTS", []):
        _client(row, folder)
    for row in shown.get("DATABASES", []):
        _database(row, folder)
    for row in shown.get("STATS", []):
        _stats(row, folder)
    for row in shown.get("LISTS", []):
        folder.add("pgbouncer_list_items", (str(row.get("list")),), _number(row.get("items")))
    for row in shown.get("CONFIG", []):
        config_family = CONFIG_KEYS.get(str(row.get("key")))
        if config_family is not None:
            folder.add(config_family, (), _number(row.get("value")))
    for row in shown.get("VERSION", []):
        folder.add("pgbouncer_version_info", (str(row.get("version", "")),), 1.0)
    return folder.samples()


def _pool(row: Mapping[str, Any], folder: Folder) -> None:
    """One SHOW POOLS row: clients and servers by state, the longest wait, the pool mode."""
    labels = (folder.database(row.get("database")), folder.user(row.get("user")))
    for column, state in CLIENT_STATES.items():
        folder.add("pgbouncer_client_connections", (*labels, state), _number(row.get(column)))
    for column, state in SERVER_STATES.items():
        folder.add("pgbouncer_server_connections", (*labels, state), _number(row.get(column)))
    wait = (_number(row.get("maxwait")) or 0.0) + (_number(row.get("maxwait_us")) or 0.0) / 1e6
    folder.add("pgbouncer_client_max_wait_seconds", labels, wait)
    if row.get("pool_mode"):
        folder.add("pgbouncer_pool_mode", (*labels, str(row["pool_mode"])), 1.0)


def _database(row: Mapping[str, Any], folder: Folder) -> None:
    database = (folder.database(row.get("name")),)
    for column, family in DATABASE_COLUMNS.items():
        folder.add(family, database, _number(row.get(column)))


def _stats(row: Mapping[str, Any], folder: Folder) -> None:
    database = (folder.database(row.get("database")),)
    for column, (family, scale) in STATS_COLUMNS.items():
        value = _number(row.get(column))
        folder.add(family, database, None if value is None else value * scale)


def _client(row: Mapping[str, Any], folder: Folder) -> None:
    """One SHOW CLIENTS row: one client, counted by database, user, application and state."""
    labels = (
        folder.database(row.get("database")),
        folder.user(row.get("user")),
        folder.application(row.get("application_name")),
        str(row.get("state") or ""),
    )
    folder.add("pgbouncer_clients", labels, 1.0)


def stats(target: TargetSettings, console: AdminConsole) -> Callable[[], list[Sample]]:
    """The ``take`` function of a PgBouncer target's stats job."""

    def take() -> list[Sample]:
        shown = console.show("POOLS", "CLIENTS", "DATABASES", "STATS", "LISTS", "CONFIG", "VERSION")
        census = target.census
        return samples(shown, Folder(census.databases, census.users, census.applications))

    return take
