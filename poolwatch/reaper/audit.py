"""The audit trail of the reaper: every termination and every dry-run candidate, recorded before it is
forgotten, as a structured log line, a counter, and a row in an audit table.

Rows go to a PostgreSQL database the configuration names (``audit.url``). The table and a
schema-version table are created when missing (under an advisory lock, so replicas starting together
do not race) or accepted when an operator created them from deploy/sql. Every record goes first into
a bounded spool (an append-only SQLite store with ``audit.spool_path``, see ``spool``) and leaves it
only once its row is committed; an audit database that is down just makes records wait. Each
record carries a UUID and the insert skips UUIDs already present, so a commit whose acknowledgement
was lost is not written twice.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import threading
import uuid
from collections import deque
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy import create_engine, text

from poolwatch.errors import ConfigError, PoolwatchError, first_line, translate, translating
from poolwatch.reaper.own import BACKENDS
from poolwatch.reaper.spool import Spool

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.sql.elements import TextClause

    from poolwatch.config import AuditSettings
    from poolwatch.metrics import ReaperMetrics

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
QUERY_CHARS: Final = 200
BATCH: Final = 500
REPLICA: Final = f"{socket.gethostname()}:{os.getpid()}"
AUDIT_APPLICATION: Final = "poolwatch-audit"
KEPT: Final = 10  # decisions per target kept in memory for the status page

COLUMNS: Final = (
    "record_id",
    "target",
    "kind",
    "pid",
    "username",
    "database",
    "application",
    "client_addr",
    "state",
    "idle_seconds",
    "query",
    "backend_start",
    "reason",
    "mode",
    "decided_at",
    "replica",
)


def schema_sql(table: str) -> list[str]:
    """The DDL of schema version 1 (deploy/sql/audit.sql holds the same for default names)."""
    return [
        f"""CREATE TABLE {table} (
    id bigserial PRIMARY KEY,
    record_id uuid NOT NULL UNIQUE,
    target text NOT NULL,
    kind text NOT NULL,
    pid bigint NOT NULL,
    username text,
    database text,
    application text,
    client_addr text,
    state text,
    idle_seconds double precision NOT NULL,
    query text,
    backend_start timestamptz,
    reason text NOT NULL,
    mode text NOT NULL,
    decided_at timestamptz NOT NULL,
    replica text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
)""",
        f"CREATE INDEX {table}_decided_at ON {table} (decided_at DESC)",
        f"""CREATE TABLE {table}_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)""",
        f"INSERT INTO {table}_schema (version) VALUES ({SCHEMA_VERSION})",  # noqa: S608
    ]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One reaper decision. ``pid`` is the backend pid (PostgreSQL) or client id (Redis)."""

    target: str
    kind: str
    pid: int
    username: str | None
    database: str | None
    application: str | None
    client_addr: str | None
    state: str | None
    idle_seconds: float
    query: str | None
    backend_start: str | None
    reason: str
    mode: str
    decided_at: str
    replica: str = REPLICA
    record_id: str = ""

    @classmethod
    def make(cls, *, record_id: str | None = None, **fields: Any) -> AuditRecord:
        """A record decided now (unless ``decided_at`` says when), with a fresh UUID unless a
        ``record_id`` is given."""
        fields.setdefault("decided_at", dt.datetime.now(dt.timezone.utc).isoformat())
        query = fields.get("query")
        if isinstance(query, str) and len(query) > QUERY_CHARS:
            fields["query"] = query[:QUERY_CHARS]
        backend_start = fields.get("backend_start")
        if isinstance(backend_start, dt.datetime):
            fields["backend_start"] = backend_start.isoformat()
        return cls(**fields, record_id=record_id or str(uuid.uuid4()))

    def as_dict(self) -> dict[str, Any]:
        # Every field is a str, a number or None: a shallow copy is the whole record (asdict()'s
        # deep copy of each value took most of recording a 90-session run).
        return {name: getattr(self, name) for name in _FIELD_NAMES}


_FIELD_NAMES: Final = tuple(field.name for field in fields(AuditRecord))
# For the one-statement insert of a batch (``_write``): the columns that are not text, their types in
# the audit table, and the arrays they are passed in (record ids and times as text, cast per row).
_COLUMN_TYPES: Final = {
    "record_id": "uuid",
    "pid": "bigint",
    "idle_seconds": "float8",
    "backend_start": "timestamptz",
    "decided_at": "timestamptz",
}
_ARRAY_TYPES: Final = {"pid": "bigint", "idle_seconds": "float8"}


V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Candidates:
    """What a dry run would terminate now: the first ``KEPT`` (longest idle first), and how many."""

    first: tuple[AuditRecord, ...] = ()
    total: int = 0

    @classmethod
    def of(cls, victims: Sequence[V], record: Callable[[V], AuditRecord]) -> Candidates:
        return cls(tuple(record(victim) for victim in victims[:KEPT]), len(victims))


class AuditLog:
    """Records reaper decisions; shared by every target's reaper (thread-safe)."""

    def __init__(
        self,
        settings: AuditSettings,
        metrics: ReaperMetrics | None = None,
        *,
        engine: Engine | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only``: only look at the spool (``poolwatch audit``), never create or change it."""
        self.settings = settings
        self.table = settings.table
        self._metrics = metrics
        self._engine = engine
        self._engine_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._schema_ready = False
        self._failing = False
        self._latest: dict[str, deque[AuditRecord]] = {}
        self._latest_lock = threading.Lock()
        self.spool: Spool | None = None
        if settings.url is not None:
            self.spool = Spool(
                settings.spool_max, settings.spool_path, on_drop=self._dropped, read_only=read_only
            )
            self._set_spooled()

    @property
    def enabled(self) -> bool:
        """True when records go to a table (``audit.url`` is set)."""
        return self.spool is not None

    def _dropped(self, count: int) -> None:
        if self._metrics is not None:
            self._metrics.dropped.inc(count)

    def _set_spooled(self) -> None:
        if self._metrics is not None and self.spool is not None:
            self._metrics.spooled.set(len(self.spool))

    def record(self, record: AuditRecord) -> None:
        """Log, count and spool one decision. Never raises; the row is written by ``flush()``."""
        self.record_all([record])

    def record_all(self, records: Sequence[AuditRecord]) -> None:
        """``record()`` for each of a run's decisions, spooled together (one commit)."""
        for record in records:
            self._announce(record)
        if self.spool is not None and records:
            self.spool.push_all([record.as_dict() for record in records])
            self._set_spooled()

    def recorded(self, record_ids: Collection[str]) -> set[str]:
        """Those of ``record_ids`` already recorded: waiting in the spool, or in the audit table.
        The table is not asked while the audit database is failing; what it holds is then unknown,
        and only the spool's are returned."""
        if self.spool is None or not record_ids:
            return set()
        found = self.spool.present(record_ids)
        missing = sorted(set(record_ids) - found)
        if not missing or self._failing:
            return found
        statement = text(
            f"SELECT CAST(record_id AS text) FROM {self.table} "  # noqa: S608 - table is validated
            "WHERE record_id = ANY(CAST(:ids AS uuid[]))"
        )
        try:
            with translating("audit"), self._get_engine().connect() as connection:
                if _schema_version(connection, self.table) is not None:
                    found |= {str(row[0]) for row in connection.execute(statement, {"ids": missing})}
        except Exception as exc:  # unknown: the caller decides as without the table
            log.debug("audit table lookup failed: %s", first_line(translate(exc) or exc))
        return found

    def _announce(self, record: AuditRecord) -> None:
        log.info(
            "reaper %s %s: %s %d user=%s database=%s application=%s idle=%.0fs (%s)",
            record.target,
            "terminated" if record.mode == "enforce" else "would terminate",
            {"postgres": "pid", "mysql": "connection"}.get(record.kind, "client"),
            record.pid,
            record.username,
            record.database,
            record.application,
            record.idle_seconds,
            record.reason,
            extra={"event": "reaper_decision", **{k: v for k, v in record.as_dict().items() if k != "query"}},
        )
        if self._metrics is not None:
            self._metrics.terminated.labels(record.target, record.reason, record.mode).inc()
        with self._latest_lock:
            self._latest.setdefault(record.target, deque(maxlen=KEPT)).append(record)

    def latest(self, target: str) -> list[AuditRecord]:
        """The last ``KEPT`` decisions about ``target`` this process made, newest first (memory only)."""
        with self._latest_lock:
            return list(reversed(self._latest.get(target, ())))

    def flush(self) -> int:
        """Write spooled records to the audit table; the number written. Raises a PoolwatchError if
        the audit database cannot be reached (the records stay spooled). Skips if a flush is running."""
        if self.spool is None or (self._schema_ready and not len(self.spool)):
            return 0
        if not self._flush_lock.acquire(blocking=False):
            return 0
        written = 0
        try:
            if not self._schema_ready:  # the first run after start-up creates the table if missing
                self.ensure_schema()
            while batch := self.spool.peek(BATCH):
                self._write(batch)
                self.spool.remove({r["record_id"] for r in batch})
                written += len(batch)
                if self._metrics is not None:
                    self._metrics.written.inc(len(batch))
                self._set_spooled()
        except PoolwatchError as exc:
            if not self._failing:
                log.warning("audit database unavailable, %d records spooled: %s", len(self.spool), exc)
            self._failing = True
            raise
        finally:
            self._flush_lock.release()
        if self._failing:
            log.info("audit database back: spooled records written")
        self._failing = False
        return written

    def try_flush(self) -> None:
        """``flush()`` for a job: an unreachable audit database is logged (once), not raised."""
        try:
            self.flush()
        except PoolwatchError:
            return
        except Exception as exc:
            log.warning("audit flush failed: %s", first_line(translate(exc) or exc))

    def _write(self, batch: list[dict[str, Any]]) -> None:
        # One INSERT for the whole batch, each column passed as one array: a statement per record
        # (even sent together, as psycopg2's execute_batch does) cost the server ~4 ms for 90 rows.
        columns = {c: [r.get(c) for r in batch] for c in COLUMNS}
        with translating("audit"), self._get_engine().begin() as connection:
            self._ensure_schema(connection)
            connection.execute(self._insert, columns)

    @functools.cached_property
    def _insert(self) -> TextClause:
        arrays = ", ".join(f"CAST(:{c} AS {_ARRAY_TYPES.get(c, 'text')}[])" for c in COLUMNS)
        values = ", ".join(
            f"CAST(v.{c} AS {_COLUMN_TYPES[c]})" if c in _COLUMN_TYPES else f"v.{c}" for c in COLUMNS
        )
        return text(
            f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) "  # noqa: S608 - table is validated
            f"SELECT {values} FROM unnest({arrays}) AS v({', '.join(COLUMNS)}) "
            "ON CONFLICT (record_id) DO NOTHING"
        )

    def _get_engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = create_audit_engine(self.settings)
            return self._engine

    def ensure_schema(self) -> None:
        """Create the audit table and its schema-version table if they are missing."""
        with translating("audit"), self._get_engine().begin() as connection:
            self._ensure_schema(connection)

    def _ensure_schema(self, connection: Connection) -> None:
        if self._schema_ready:
            return
        version = _schema_version(connection, self.table)
        if version is None:
            # Serialise creation between replicas; the second one finds the tables made.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": self.table})
            version = _schema_version(connection, self.table)
            if version is None:
                for statement in schema_sql(self.table):
                    connection.execute(text(statement))
                log.info("audit table %s created (schema version %d)", self.table, SCHEMA_VERSION)
                version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"audit table {self.table} has schema version {version}; this poolwatch writes "
                f"version {SCHEMA_VERSION}"
            )
        self._schema_ready = True

    def recent(
        self, limit: int = 20, target: str | None = None, mode: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest records in the audit table, newest first."""
        where = []
        params: dict[str, Any] = {"limit": limit}
        if target is not None:
            where.append("target = :target")
            params["target"] = target
        if mode is not None:
            where.append("mode = :mode")
            params["mode"] = mode
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        statement = text(
            f"SELECT {', '.join(COLUMNS)} FROM {self.table} {clause}"  # noqa: S608 - validated names
            "ORDER BY decided_at DESC, id DESC LIMIT :limit"
        )
        with translating("audit"), self._get_engine().connect() as connection:
            if _schema_version(connection, self.table) is None:
                return []
            return [dict(row._mapping) for row in connection.execute(statement, params)]  # noqa: SLF001

    def close(self) -> None:
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        if self.spool is not None:
            self.spool.close()


def _schema_version(connection: Connection, table: str) -> int | None:
    found = connection.execute(
        text("SELECT to_regclass(:t) IS NOT NULL AND to_regclass(:s) IS NOT NULL"),
        {"t": table, "s": f"{table}_schema"},
    ).scalar_one()
    if not found:
        return None
    version = connection.execute(text(f"SELECT max(version) FROM {table}_schema")).scalar_one()  # noqa: S608
    return None if version is None else int(version)


def create_audit_engine(settings: AuditSettings) -> Engine:
    """A small pool for the audit database: one connection is plenty, pre-ping notices a restart."""
    engine = create_engine(
        settings.sqlalchemy_url(),
        pool_size=1,
        max_overflow=1,
        pool_pre_ping=True,
        pool_timeout=settings.connect_timeout,
        connect_args={
            "connect_timeout": max(2, int(settings.connect_timeout)),
            "application_name": AUDIT_APPLICATION,
            "options": f"-c statement_timeout={int(settings.connect_timeout * 2000)}",
        },
    )
    BACKENDS.track(engine)  # the audit database may be a monitored one: never reap our own writer
    return engine
