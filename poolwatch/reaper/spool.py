"""A bounded local spool of audit records waiting for the audit database, in an append-only store.

The store is an SQLite database in WAL mode: a record is one appended row (one commit, no rewrite),
so an append costs the same with ten records waiting as with ten million, and a crash in the middle
of a write leaves the database as of its last commit. ``synchronous=FULL`` makes each commit wait
for the WAL to reach the disk: a record is the only copy of a termination that already happened
while the audit database is away, so it must survive a power loss, not just a crash of the process;
and records come a few per reaper run, so an fsync each costs nothing that matters (``NORMAL``
would lose the last commits on power loss). Without a path the same store lives in memory.

At the bound the oldest records are dropped, and every drop is reported to ``on_drop``. A spool
file in the JSON-lines format of earlier versions is migrated when opened; when the file cannot
be opened or written, records are kept in memory until a restart (and an ERROR says so). A spool
opened ``read_only`` (``poolwatch audit``, perhaps as another user than the daemon's) creates,
migrates and trims nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Sequence

log = logging.getLogger(__name__)

SQLITE_HEADER: Final = b"SQLite format 3\x00"
SCHEMA_VERSION: Final = 1
SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS records ("
    "seq INTEGER PRIMARY KEY, record_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)"
)
# How long a statement waits for another process's write lock (``poolwatch audit`` reading the
# spool of a running daemon) before it fails.
BUSY_TIMEOUT: Final = 10.0


def check_spool_directory(path: str | None, state_dir: str | None) -> None:
    """A spool file's directory must exist, unless it is inside poolwatch's own state directory
    (created when the spool is): a typo in ``audit.spool_path`` must not become a directory tree,
    made by whoever runs poolwatch, root included."""
    if path is None:
        return
    directory = Path(path).parent
    if directory.is_dir():
        return
    if state_dir is not None:
        state = os.path.abspath(state_dir)  # noqa: PTH100 - no symlinks resolved: compared as written
        if os.path.commonpath([state, os.path.abspath(directory)]) == state:  # noqa: PTH100
            return
    raise ValueError(
        f"spool_path points into the directory {str(directory)!r}, which does not exist (create it first)"
    )


class Spool:
    """A thread-safe FIFO of JSON-serialisable records, each a dict with a ``record_id``."""

    def __init__(
        self,
        limit: int,
        path: str | None = None,
        on_drop: Callable[[int], None] = lambda _n: None,
        *,
        read_only: bool = False,
    ) -> None:
        self.limit = limit
        self.path = Path(path) if path else None
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._db = self._open(self.path, read_only=read_only)
        self._count = int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])
        if read_only:
            return
        if self._count:
            log.info("audit spool %s: %d records waiting from before", self.path, self._count)
        with self._lock:
            self._trim()

    def _open(self, path: Path | None, *, read_only: bool) -> sqlite3.Connection:
        if path is None:
            return _connect(":memory:")
        try:
            if read_only:
                return _open_read_only(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if _is_json_lines(path):
                _migrate(path)
            return _connect(str(path))
        except (sqlite3.Error, OSError) as exc:
            log.error(  # noqa: TRY400 - one line; the cause is in the message
                "audit spool %s cannot be opened (%s): records are kept in memory until a restart",
                path,
                _reason(exc),
            )
            return _connect(":memory:")

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def push(self, record: dict[str, Any]) -> None:
        """Append one record; once this returns, the record is on disk (with a path)."""
        self.push_all([record])

    def push_all(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records in one transaction (one fsync for a whole reaper run, where one each
        took most of a 90-session run); once this returns, they are on disk (with a path)."""
        rows = [(str(record["record_id"]), json.dumps(record, separators=(",", ":"))) for record in records]
        if not rows:
            return
        with self._lock:
            try:
                added = self._append(rows)
            except sqlite3.Error as exc:
                self._degrade(exc)
                added = self._append(rows)
            self._count += added
            self._trim()

    def _append(self, rows: list[tuple[str, str]]) -> int:
        with _transaction(self._db):
            cursor = self._db.executemany(
                "INSERT OR IGNORE INTO records (record_id, body) VALUES (?, ?)", rows
            )
            return cursor.rowcount

    def peek(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The oldest records (copies), without removing them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM records ORDER BY seq LIMIT ?", (-1 if limit is None else limit,)
            ).fetchall()
        return [json.loads(body) for (body,) in rows]

    def present(self, record_ids: Collection[str]) -> set[str]:
        """Those of ``record_ids`` waiting here."""
        wanted = sorted(record_ids)
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(wanted), 500):  # below SQLite's limit on parameters
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in self._db.execute(
                        f"SELECT record_id FROM records WHERE record_id IN ({marks})",  # noqa: S608
                        chunk,
                    )
                )
        return found

    def remove(self, record_ids: Collection[str]) -> None:
        """Forget records once they are safely written elsewhere."""
        with self._lock:
            try:
                self._delete(record_ids)
            except sqlite3.Error as exc:
                self._degrade(exc)
                self._delete(record_ids)

    def _delete(self, record_ids: Collection[str]) -> None:
        before = self._db.total_changes
        with _transaction(self._db):
            self._db.executemany("DELETE FROM records WHERE record_id = ?", ((r,) for r in record_ids))
        self._count -= self._db.total_changes - before

    def _trim(self) -> None:
        excess = self._count - self.limit
        if excess <= 0:
            return
        try:
            self._drop_oldest(excess)
        except sqlite3.Error as exc:
            self._degrade(exc)
            self._drop_oldest(excess)
        log.error("audit spool full (%d records): dropped the %d oldest", self.limit, excess)
        self._on_drop(excess)

    def _drop_oldest(self, count: int) -> None:
        with _transaction(self._db):
            self._db.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records ORDER BY seq LIMIT ?)", (count,)
            )
        self._count -= count

    def _degrade(self, exc: sqlite3.Error) -> None:
        """The file cannot be written (disk full, removed, read-only): go on in memory with what it
        holds, so records still wait for the audit database; only a restart now would lose them."""
        log.error(
            "audit spool %s cannot be written (%s): records are kept in memory until a restart",
            self.path,
            _reason(exc),
        )
        memory = _connect(":memory:")
        with contextlib.suppress(sqlite3.Error):
            self._db.backup(memory)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db = memory
        self._count = int(memory.execute("SELECT count(*) FROM records").fetchone()[0])

    def close(self) -> None:
        """Close the store (a checkpoint folds the WAL back into the file). Safe to call twice."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()


def _connect(where: str) -> sqlite3.Connection:
    # Autocommit mode: every change is in an explicit transaction (``_transaction``). One connection
    # shared by threads, each use under the spool's lock.
    db = sqlite3.connect(where, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(SCHEMA)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    if version not in (0, SCHEMA_VERSION):
        db.close()
        raise sqlite3.DatabaseError(f"spool schema version {version}; this poolwatch reads {SCHEMA_VERSION}")
    return db


def _open_read_only(path: Path) -> sqlite3.Connection:
    """The spool at ``path`` as it is, for reading: a missing file is an empty spool, a JSON-lines
    one is read into memory."""
    if not path.exists():
        return _connect(":memory:")
    if _is_json_lines(path):
        db = _connect(":memory:")
        records, _bad = _read_json_lines(path)
        _insert(db, records)
        return db
    # Without a write-ahead log (no daemon has the store open) the file is all there is: opened as
    # immutable, SQLite creates no -wal and -shm files, which would belong to this user and could
    # keep the daemon's user from opening the store.
    wal, _shm = _sidecars(path)
    mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=BUSY_TIMEOUT, check_same_thread=False
    )
    try:
        db.execute("SELECT count(*) FROM records").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _insert(db: sqlite3.Connection, records: list[dict[str, Any]]) -> None:
    with _transaction(db):
        db.executemany(
            "INSERT OR IGNORE INTO records (record_id, body) VALUES (?, ?)",
            ((str(r["record_id"]), json.dumps(r, separators=(",", ":"))) for r in records),
        )


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _is_json_lines(path: Path) -> bool:
    """True for a non-empty file that is not an SQLite database: the spool of earlier versions."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return False
    return bool(head) and head != SQLITE_HEADER


def _migrate(path: Path) -> None:
    """Turn a JSON-lines spool into the SQLite store at the same path, keeping every record.

    The store is built beside the old file and renamed over it: a crash before the rename leaves
    the old file to migrate again, after it the new store. Lines that cannot be read are not lost
    either: the old file is then kept as ``<name>.unreadable``."""
    records, bad = _read_json_lines(path)
    staging = path.with_name(path.name + ".migrating")
    for leftover in (staging, *_sidecars(staging)):
        leftover.unlink(missing_ok=True)
    db = _connect(str(staging))
    try:
        _insert(db, records)
    finally:
        db.close()
    if bad:
        kept = path.with_name(path.name + ".unreadable")
        shutil.copyfile(path, kept)
        log.warning("audit spool %s: %d unreadable lines kept in %s", path, bad, kept)
    staging.replace(path)
    _fsync_directory(path.parent)
    log.info("audit spool %s: %d records migrated to the append-only store", path, len(records))


def _read_json_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    records: list[dict[str, Any]] = []
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict) and "record_id" in record:
            records.append(record)
        else:
            bad += 1
    return records, bad


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
