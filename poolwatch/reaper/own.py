"""poolwatch's own server sessions, which the reaper never touches.

Every engine the daemon builds is tracked from its first connection: the pool's ``connect`` event
records the backend pid the server reports (``connection.info.backend_pid``), ``close`` forgets it.
The set is process-wide and not split by server: sparing a stranger whose pid happens to equal one of
ours on another server costs nothing, while missing one of ours would kill poolwatch's own session.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


def backend_pid(dbapi_connection: Any) -> int | None:
    """The server pid of a psycopg2 connection, the connection id of a PyMySQL or mysqlclient one
    (``thread_id()``), or None for other drivers."""
    info = getattr(dbapi_connection, "info", None)
    pid = getattr(info, "backend_pid", None)
    if isinstance(pid, int):
        return pid
    get = getattr(dbapi_connection, "get_backend_pid", None) or getattr(dbapi_connection, "thread_id", None)
    return int(get()) if callable(get) else None


class OwnBackends:
    """A thread-safe set of backend pids that belong to this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        # The engines already tracked, held weakly: an engine a reload dropped is forgotten with it
        # (its id() may be reused by the engine that replaces it, which must be tracked too).
        self._tracked: weakref.WeakSet[Engine] = weakref.WeakSet()

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def pids(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._pids)

    def track(self, engine: Engine) -> None:
        """Record the pid of every connection ``engine`` opens from now on (once per engine)."""
        with self._lock:
            if engine in self._tracked:
                return
            self._tracked.add(engine)

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            # A pool hook: it must never raise into the pool.
            try:
                pid = backend_pid(dbapi_connection)
                if pid is not None:
                    self.add(pid)
            except Exception as exc:
                log.debug("could not read a backend pid: %s", type(exc).__name__)

        def on_close(dbapi_connection: Any, _record: Any) -> None:
            try:
                pid = backend_pid(dbapi_connection)
                if pid is not None:
                    self.discard(pid)
            except Exception as exc:
                log.debug("could not read a backend pid: %s", type(exc).__name__)

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "close", on_close)
        event.listen(engine, "close_detached", on_close)


BACKENDS = OwnBackends()
"""The process-wide set the daemon's engines and reaper connections report into."""
