"""The reaper lease: with several replicas on one target, only the holder reaps it.

PostgreSQL: a session-level advisory lock held on a dedicated connection. The server releases it when
that session ends, so a replica that loses its connection loses the lease; and the reaper runs its
kill statement on that same connection with a re-check that the lock is still held there (``FENCE``),
so a replica that no longer holds the lease cannot terminate anything, even if it has not noticed yet.

MySQL / MariaDB: the same, with a named lock (``GET_LOCK``) held by the dedicated connection; the
server frees it when that connection ends, and ``MYSQL_FENCE`` re-checks it right before each kill.

Redis: ``SET key token NX PX ttl``, renewed on every run and right before each kill by a script that
extends the TTL only while the key still holds this replica's token. Any error means "not leader".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import zlib
from typing import TYPE_CHECKING, Any, ClassVar, Final

from poolwatch.reaper.own import BACKENDS, OwnBackends, backend_pid

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis
    from prometheus_client import Gauge
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

# Two-key advisory locks: the first key says "poolwatch reaper" ('pool' in ASCII), the second is the
# target name's CRC32, so replicas configured with the same target name compete for one lock.
LOCK_CLASS: Final = 0x706F6F6C
FENCE: Final = (
    "EXISTS (SELECT 1 FROM pg_locks AS l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()"
    " AND l.classid = %(lock_class)s AND l.objid = %(lock_key)s AND l.objsubid = 2 AND l.granted)"
)


MYSQL_FENCE: Final = "IS_USED_LOCK(%(lock_name)s) = CONNECTION_ID()"


def lock_key(target: str) -> int:
    return zlib.crc32(target.encode()) & 0x7FFFFFFF


class PostgresLease:
    """An advisory lock on a dedicated autocommit connection, which the reaper also works through."""

    # CASE, not OR: the lock must not be taken again (and stacked) while held.
    HOLD_SQL: ClassVar[str] = (
        f"SELECT CASE WHEN {FENCE} THEN true ELSE pg_try_advisory_lock(%(lock_class)s, %(lock_key)s) END"
    )

    # Given up explicitly on release: the server frees a session's locks only once it has processed
    # the disconnect, after the close returns; the next replica to ask should find the lock free.
    UNLOCK_SQL: ClassVar[str] = "SELECT pg_advisory_unlock(%(lock_class)s, %(lock_key)s)"

    @staticmethod
    def lock_params(target: str) -> dict[str, Any]:
        return {"lock_class": LOCK_CLASS, "lock_key": lock_key(target)}

    def __init__(
        self,
        target: str,
        connect: Callable[[], Connection],
        leader: Gauge,
        own: OwnBackends = BACKENDS,
    ) -> None:
        self.target = target
        self.params = self.lock_params(target)
        self._connect = connect
        self._leader = leader
        self._own = own
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._pid: int | None = None
        self._held = False

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def held(self) -> bool:
        """Whether this replica held the lease at its last check."""
        return self._held

    def hold(self) -> Connection | None:
        """The lease connection if this replica holds the lease now, else None. Raises (and drops the
        connection, so the server frees the lock) when the server cannot be reached."""
        with self._lock:
            try:
                if self._connection is None:
                    self._open()
                assert self._connection is not None
                held = bool(self._connection.exec_driver_sql(self.HOLD_SQL, self.params).scalar_one())
            except Exception:
                self._drop()
                raise
            self._set(held)
            return self._connection if held else None

    def _open(self) -> None:
        connection = self._connect()
        self._connection = connection
        self._pid = backend_pid(connection.connection.dbapi_connection)
        if self._pid is not None:
            self._own.add(self._pid)

    def _set(self, held: bool) -> None:
        if held != self._held:
            log.info("reaper lease of %s %s", self.target, "acquired" if held else "held elsewhere")
        self._held = held
        self._leader.labels(self.target).set(1 if held else 0)

    def _drop(self) -> None:
        if self._held:
            log.warning("reaper lease of %s lost with its connection", self.target)
        self._held = False
        self._leader.labels(self.target).set(0)
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except Exception as exc:
                log.debug("closing the lease connection failed: %s", type(exc).__name__)
        if self._pid is not None:
            self._own.discard(self._pid)
            self._pid = None

    def release(self) -> None:
        """Give the lease up: unlock, then close the session (which would free the lock too, but only
        once the server has seen it go). Safe to call twice."""
        with self._lock:
            held = self._held
            self._held = False
            if held and self._connection is not None:
                try:
                    self._connection.exec_driver_sql(self.UNLOCK_SQL, self.params)
                except Exception as exc:  # the close below frees it all the same
                    log.debug("unlocking the lease failed: %s", type(exc).__name__)
            self._drop()
            if held:
                log.info("reaper lease of %s released", self.target)


class MySQLLease(PostgresLease):
    """A named lock (``GET_LOCK``) on a dedicated autocommit MySQL / MariaDB connection."""

    # GET_LOCK by the session already holding the lock nests it (MySQL 5.7+, MariaDB 10.0+): only
    # ask for it when not held here.
    HOLD_SQL: ClassVar[str] = f"SELECT CASE WHEN {MYSQL_FENCE} THEN 1 ELSE GET_LOCK(%(lock_name)s, 0) END"
    UNLOCK_SQL: ClassVar[str] = "SELECT RELEASE_LOCK(%(lock_name)s)"

    @staticmethod
    def lock_params(target: str) -> dict[str, Any]:
        # Lock names are at most 64 characters: the target name's CRC32 stands for it, as above.
        return {"lock_name": f"poolwatch.reaper.{lock_key(target):08x}"}


_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """``SET NX PX`` with a per-replica token; renewed only while the key still holds the token."""

    def __init__(self, target: str, client: redis.Redis, leader: Gauge, ttl: float) -> None:
        self.target = target
        self.key = f"poolwatch:reaper:lease:{target}"
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4()}"
        self._client = client
        self._leader = leader
        self._ttl_ms = max(1, int(ttl * 1000))
        self._lock = threading.Lock()
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this replica held the lease at its last check."""
        return self._held

    def hold(self) -> bool:
        """True if this replica holds the lease now (renewing or acquiring it). Raises on errors,
        after marking the lease lost: a replica that cannot reach Redis must not act."""
        with self._lock:
            try:
                if self._held and self._renew():
                    held = True
                else:
                    held = bool(self._client.set(self.key, self.token, nx=True, px=self._ttl_ms))
            except Exception:
                self._set(held=False)
                raise
            self._set(held=held)
            return held

    def _renew(self) -> bool:
        return bool(self._client.eval(_RENEW, 1, self.key, self.token, self._ttl_ms))

    def still_held(self) -> bool:
        """Renew right before acting; False (and not leader) if the lease was lost or on any error."""
        with self._lock:
            try:
                held = self._held and self._renew()
            except Exception as exc:
                log.warning("reaper lease of %s: renewal failed: %s", self.target, type(exc).__name__)
                held = False
            self._set(held=held)
            return held

    def _set(self, *, held: bool) -> None:
        if held != self._held:
            log.info("reaper lease of %s %s", self.target, "acquired" if held else "not held")
        self._held = held
        self._leader.labels(self.target).set(1 if held else 0)

    def forget(self) -> None:
        """Stop counting on the lease without a round trip (one may need a login): the key lapses
        after its TTL, and until then no replica, this one included, can take it."""
        with self._lock:
            self._set(held=False)

    def release(self) -> None:
        with self._lock:
            if self._held:
                try:
                    self._client.eval(_RELEASE, 1, self.key, self.token)
                except Exception as exc:
                    log.debug("releasing the lease failed: %s", type(exc).__name__)
            self._set(held=False)
