"""The probe job: does the target answer? SELECT 1 through the shared engine, or Redis PING.

A SQL probe checks a connection out of the same pool the other jobs use, so a pre-ping failure on a
stale connection is seen and counted by the pool, and the probe then succeeds on a fresh connection:
``poolwatch_up`` says whether the target can be used now, not whether one old socket died.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from poolwatch.errors import first_line, reason_of, translate

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis
    from sqlalchemy.engine import Engine

    from poolwatch.jobs import Outcome
    from poolwatch.metrics import ProbeMetrics

log = logging.getLogger(__name__)


def sql_check(engine: Engine) -> Callable[[], None]:
    def check() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1").scalar()
            # Nothing to keep: end the implicit transaction here so the pool's reset is free.
            connection.rollback()

    return check


def redis_check(client: redis.Redis) -> Callable[[], None]:
    def check() -> None:
        client.ping()

    return check


class Probe:
    """A scheduled probe of one target, exporting up, latency and failures by reason."""

    task = "probe"

    def __init__(
        self,
        target: str,
        check: Callable[[], None],
        metrics: ProbeMetrics,
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self.target = target
        self.interval = interval
        self.timeout = timeout
        self._check = check
        self._metrics = metrics
        self._lock = threading.Lock()
        self._last: Outcome | None = None
        self._last_error = ""

    def run(self) -> None:
        self._check()

    def record(self, outcome: Outcome) -> None:
        self._metrics.duration.labels(self.target).observe(outcome.duration)
        was_up = self._last is not None and self._last.ok
        if outcome.error is None:
            self._metrics.up.labels(self.target).set(1)
            message = ""
            if self._last is not None and not was_up:
                log.info("target %s is up again", self.target)
        else:
            reason = reason_of(outcome.error)
            self._metrics.up.labels(self.target).set(0)
            self._metrics.failures.labels(self.target, reason).inc()
            translated = translate(outcome.error, target=self.target)
            message = first_line(translated if translated is not None else outcome.error)
            if was_up or self._last is None or message != self._last_error:
                log.warning("probe of %s failed (%s): %s", self.target, reason, message)
        with self._lock:
            self._last, self._last_error = outcome, message

    def status(self) -> dict[str, object]:
        """The last result, for the status page and ``poolwatch check``."""
        with self._lock:
            last, error = self._last, self._last_error
        if last is None:
            return {"up": None, "latency_seconds": None, "error": "", "checked_at": None}
        return {
            "up": last.ok,
            "latency_seconds": round(last.duration, 6),
            "error": error,
            "checked_at": last.finished_at,
        }
