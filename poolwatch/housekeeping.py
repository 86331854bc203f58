"""Pool housekeeping SQLAlchemy and redis-py lack: keepalive, idle eviction, max lifetime, refill.

One pass (``run_once``) over an instrumented pool's idle connections:

- max lifetime: close idle connections older than ``max_lifetime`` less a per-connection jitter of up
  to 2.5 % (drawn when the connection opened), so a pool opened at once does not expire at once;
- idle eviction: close connections idle for ``idle_timeout``, keeping ``min_idle``;
- keepalive: ping connections unused for ``keepalive`` seconds; a failed ping closes the connection
  (counted as ``pre_ping_failed``);
- refill: open connections until ``min_idle`` are idle, never beyond the pool size.

It never takes a connection a caller is waiting for: records are taken out of the pool's queue only
while it holds more idle connections than there are callers inside a checkout, and the queue's lock
is held for list operations only, never across I/O, so a caller is never blocked behind a ping or a
close. Leak detection and histogram folding also run here, so an application that is never scraped
still gets leak warnings and bounded memory.

redis-py pools get max lifetime and idle eviction: idle connections are disconnected in place under
the lock redis-py hands connections out with (keepalive is redis-py's ``health_check_interval``, and
a disconnected connection reconnects on its next checkout, so there is no refill).

``HousekeepingJob`` runs a pass on the daemon's scheduler; ``BackgroundHousekeeper`` is a small
thread an application starts for its own engine. Async pools (AsyncAdaptedQueuePool) are only read,
never maintained: their queue belongs to the event loop.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.pool import QueuePool

from poolwatch.instrument.sqlalchemy import SQLAlchemyInstrumentation, connected_at
from poolwatch.jobs import NO_BACKOFF, TargetJob

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.pool import ConnectionPoolEntry

    from poolwatch.config import PoolSettings
    from poolwatch.instrument.redis import RedisInstrumentation
    from poolwatch.instrument.sqlalchemy import PoolInternals
    from poolwatch.jobs import Backoff, Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HousekeepingPolicy:
    """What housekeeping keeps: ``None`` turns a rule off."""

    min_idle: int = 0
    idle_timeout: float | None = None
    max_lifetime: float | None = None
    keepalive: float | None = None

    @classmethod
    def from_settings(cls, pool: PoolSettings) -> HousekeepingPolicy:
        return cls(pool.min_idle, pool.idle_timeout, pool.max_lifetime, pool.keepalive)


@dataclass
class Report:
    """What one pass did (for logs and tests)."""

    closed: dict[str, int] = field(default_factory=dict)
    pinged: int = 0
    opened: int = 0

    def count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1


class Housekeeper:
    """Maintains one instrumented pool (SQLAlchemy QueuePool or redis-py ConnectionPool)."""

    def __init__(
        self,
        instrumentation: SQLAlchemyInstrumentation | RedisInstrumentation,
        policy: HousekeepingPolicy,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.instrumentation = instrumentation
        self.policy = policy
        self._wall = wall
        self._lock = threading.Lock()  # one pass at a time, whoever calls
        instrumentation.recorder.min_idle = policy.min_idle

    def run_once(self) -> Report:
        with self._lock:
            recorder = self.instrumentation.recorder
            recorder.check_leaks()
            recorder.fold()
            if isinstance(self.instrumentation, SQLAlchemyInstrumentation):
                return self._sql_pass(self.instrumentation)
            return self._redis_pass(self.instrumentation)

    # -- SQLAlchemy ---------------------------------------------------------------------------------

    def _sql_pass(self, instrumentation: SQLAlchemyInstrumentation) -> Report:
        report = Report()
        pool, internals = instrumentation.pool, instrumentation.internals()
        if not isinstance(pool, QueuePool) or internals is None or internals.mutex is None:
            return report  # gone, or an asyncio queue (owned by the event loop)
        retire, ping = self._select(internals.idle_records, internals.mutex)
        for record, reason in retire:
            instrumentation.close_with_reason(record, reason)
            internals.dec_overflow()
            report.count(reason)
        for record in ping:
            if self._ping(internals.dialect, record):
                report.pinged += 1
                internals.give_back(record)
            else:
                internals.dec_overflow()
                report.count("pre_ping_failed")
        self._refill(pool, internals, report)
        return report

    def _select(
        self, queue: Any, mutex: Any
    ) -> tuple[list[tuple[ConnectionPoolEntry, str]], list[ConnectionPoolEntry]]:
        """Take the records to retire or ping out of the idle queue (under its lock, briefly)."""
        policy, instrumentation = self.policy, self.instrumentation
        assert isinstance(instrumentation, SQLAlchemyInstrumentation)
        recorder = instrumentation.recorder
        now, wall = recorder.clock(), self._wall()
        retire: list[tuple[ConnectionPoolEntry, str]] = []
        ping: list[ConnectionPoolEntry] = []
        with mutex:
            # Callers inside a checkout may be about to take any idle record: leave them enough.
            spare = len(queue) - recorder.pending()
            keep = len(queue)
            for record in list(queue):
                if spare <= 0:
                    break
                if record.dbapi_connection is None:
                    continue  # an empty slot: SQLAlchemy reconnects it on its next checkout
                since = recorder.idle_since(record)
                idle_for = 0.0 if since is None else now - since
                reason = None
                if policy.max_lifetime is not None:
                    jitter = instrumentation.jitter(record)
                    if wall - connected_at(record) > policy.max_lifetime * (1.0 - jitter):
                        reason = "max_lifetime"
                if reason is None and policy.idle_timeout is not None and idle_for > policy.idle_timeout:
                    reason = "idle_timeout" if keep > policy.min_idle else None
                if reason is not None:
                    retire.append((record, reason))
                    keep -= 1
                elif policy.keepalive is not None and idle_for > policy.keepalive:
                    ping.append(record)
                else:
                    continue
                queue.remove(record)
                spare -= 1
        return retire, ping

    def _ping(self, dialect: Any, record: ConnectionPoolEntry) -> bool:
        instrumentation = self.instrumentation
        assert isinstance(instrumentation, SQLAlchemyInstrumentation)
        recorder = instrumentation.recorder
        connection = record.dbapi_connection
        try:
            alive = bool(dialect.do_ping(connection))
            dialect.do_rollback(connection)  # the ping's SELECT opened a transaction
        except Exception as exc:
            log.info("pool %s: keepalive ping failed: %s", recorder.name, type(exc).__name__)
            alive = False
            error: BaseException | None = exc
        else:
            error = None
        if alive:
            recorder.mark_idle(record)
            return True
        instrumentation.invalidate_with_reason(record, "pre_ping_failed", error)
        return False

    def _refill(self, pool: QueuePool, internals: PoolInternals, report: Report) -> None:
        recorder = self.instrumentation.recorder
        while (
            pool.checkedin() < self.policy.min_idle
            and pool.checkedin() + pool.checkedout() < pool.size()
            and recorder.pending() == 0
        ):
            if not internals.inc_overflow():
                return
            try:
                record = internals.create()
            except Exception as exc:
                internals.dec_overflow()
                recorder.connect_failed(exc)
                log.warning("pool %s: refill to min_idle failed: %s", recorder.name, type(exc).__name__)
                return
            recorder.mark_idle(record)
            internals.give_back(record)
            report.opened += 1

    # -- redis-py -----------------------------------------------------------------------------------

    def _redis_pass(self, instrumentation: RedisInstrumentation) -> Report:
        """Max lifetime and idle eviction for redis-py (keepalive is redis-py's ``health_check_interval``).

        A retired connection is disconnected where it lies: it stays in the pool's free list and
        redis-py reconnects it when it is next handed out, so there is no refill here.
        """
        report = Report()
        pool, policy = instrumentation.pool, self.policy
        if pool is None or (policy.idle_timeout is None and policy.max_lifetime is None):
            return report
        recorder = instrumentation.recorder
        internals = instrumentation.internals()
        ledger = recorder.ledger
        now = recorder.clock()  # connects are stamped on the recorder clock too (not ``wall``)

        def retire(connection: Any, reason: str) -> None:
            connection.disconnect()
            ledger.idle_since.pop(connection, None)  # no longer idle: reconnects on its next checkout
            instrumentation.forget_opened(connection)
            recorder.close(reason)
            report.count(reason)

        # While this lock is held no free connection can be handed out, so none is in use while it is
        # disconnected here; disconnecting is a local socket close, as ConnectionPool.disconnect()
        # does under its lock too.
        with internals.lock():
            idle = internals.idle()
            if policy.max_lifetime is not None:
                for connection in idle:
                    stamp = instrumentation.opened(connection)
                    if (
                        stamp is not None
                        and internals.connected(connection)
                        and now - stamp[0] > policy.max_lifetime * (1.0 - stamp[1])
                    ):
                        retire(connection, "max_lifetime")
            if policy.idle_timeout is not None:
                since_of = recorder.idle_since
                stamped = [(since, c) for c in idle if (since := since_of(c)) is not None]
                keep = len(stamped)
                for since, connection in sorted(stamped, key=operator.itemgetter(0)):
                    if keep <= policy.min_idle:
                        break
                    if now - since > policy.idle_timeout:
                        retire(connection, "idle_timeout")
                        keep -= 1
        return report


class HousekeepingJob(TargetJob):
    """The daemon's scheduled housekeeping of one target's pool; ``backoff`` (the target's probe)
    defers runs while logins to the target are held back (a refill to ``min_idle`` would log in)."""

    task = "housekeeping"

    def __init__(
        self,
        target: str,
        housekeeper: Housekeeper,
        *,
        interval: float,
        timeout: float,
        backoff: Backoff = NO_BACKOFF,
    ) -> None:
        super().__init__(target, interval=interval, timeout=timeout, backoff=backoff)
        self._housekeeper = housekeeper

    def run(self) -> None:
        self.defer_while_backing_off()
        report = self._housekeeper.run_once()
        if report.closed or report.opened:
            log.debug("housekeeping %s: %s", self.target, report)

    def record(self, outcome: Outcome) -> None:
        if outcome.error is not None:
            log.warning("housekeeping of %s failed: %s", self.target, type(outcome.error).__name__)


class BackgroundHousekeeper:
    """Runs housekeeping every ``interval`` seconds on a daemon thread, for an application's pool.

    ``start()`` returns self; ``stop()`` is safe to call twice and waits for the thread.
    """

    def __init__(self, housekeeper: Housekeeper, *, interval: float = 30.0) -> None:
        self.housekeeper = housekeeper
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundHousekeeper:
        if self._thread is None:
            name = f"poolwatch-housekeeping-{self.housekeeper.instrumentation.name}"
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._run()

    def _run(self) -> None:
        try:
            self.housekeeper.run_once()
        except Exception:
            log.exception("housekeeping of pool %s failed", self.housekeeper.instrumentation.name)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def start_housekeeping(
    instrumentation: SQLAlchemyInstrumentation | RedisInstrumentation,
    *,
    interval: float = 30.0,
    min_idle: int = 0,
    idle_timeout: float | None = 600.0,
    max_lifetime: float | None = 1800.0,
    keepalive: float | None = 120.0,
) -> BackgroundHousekeeper:
    """Start background housekeeping of an instrumented pool; call ``.stop()`` at shutdown."""
    policy = HousekeepingPolicy(min_idle, idle_timeout, max_lifetime, keepalive)
    return BackgroundHousekeeper(Housekeeper(instrumentation, policy), interval=interval).start()
