"""The probe job: does the target answer? SELECT 1 through the shared engine, or Redis PING.

A SQL probe checks a connection out of the same pool the other jobs use, so a pre-ping failure on a
stale connection is seen and counted by the pool, and the probe then succeeds on a fresh connection:
``poolwatch_up`` says whether the target can be used now, not whether one old socket died.

Authentication failures back off: after the second consecutive one the probe waits 2, 4, 8 ... times
its interval between attempts, up to ``auth_backoff_max``; the runs in between are deferred (no
connection attempt) and ``poolwatch_probe_backoff_seconds`` shows the current wait. Any other outcome
ends the back-off, so a server coming back is seen within one interval. While it lasts, the target's
other jobs (census, housekeeping, reaper) defer their runs as well (``backing_off``): only the probe's
spaced attempts log in.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from poolwatch.database import select_one
from poolwatch.errors import Reason, first_line, reason_of, translate
from poolwatch.jobs import TargetJob

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis
    from sqlalchemy.engine import Engine

    from poolwatch.jobs import Outcome
    from poolwatch.metrics import ProbeMetrics

log = logging.getLogger(__name__)


def sql_check(engine: Engine) -> Callable[[], None]:
    return functools.partial(select_one, engine)


def redis_check(client: redis.Redis) -> Callable[[], None]:
    def check() -> None:
        client.ping()

    return check


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How the last probe of a target ended; ``up`` is None before the first one."""

    up: bool | None
    since: float | None
    latency_seconds: float | None
    error: str
    reason: str
    checked_at: float | None
    backoff_seconds: float


class Probe(TargetJob):
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
        auth_backoff_max: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A probe defers to its own back-off (``backing_off``), not to another job's.
        super().__init__(target, interval=interval, timeout=timeout)
        self._check = check
        self._metrics = metrics
        self._backoff_max = max(interval, auth_backoff_max if auth_backoff_max is not None else 300.0)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Outcome | None = None
        self._last_error = ""
        self._last_reason: Reason | None = None
        self._since: float | None = None  # Unix time up or down began
        self._auth_failures = 0
        self._last_attempt = 0.0
        self._backoff = 0.0

    def run(self) -> None:
        now = self._clock()
        with self._lock:
            # A quarter interval of slack: scheduler ticks jitter, and a wait of 2x must not become 3x.
            waiting = self._backoff > 0 and now < self._last_attempt + self._backoff - self.interval / 4
        if waiting:
            self.defer("backing off after failed logins")
        with self._lock:
            self._last_attempt = now
        self._check()

    @property
    def backoff_seconds(self) -> float:
        """The current wait between attempts after authentication failures; 0 when not backing off."""
        with self._lock:
            return self._backoff

    @property
    def backing_off(self) -> bool:
        """True from the second failed login in a row until a probe ends otherwise (``Backoff``). It
        stays true during the probe's own attempt, so that attempt is the only login to the target."""
        with self._lock:
            return self._backoff > 0

    def _update_backoff(self, reason: Reason | None) -> None:
        with self._lock:
            self._auth_failures = self._auth_failures + 1 if reason == "auth" else 0
            failures = self._auth_failures
            # The first failure keeps the normal interval (a password being rotated); then it doubles.
            growth = 2.0 ** (failures - 1) if failures > 1 else 0.0
            self._backoff = min(self._backoff_max, self.interval * growth)
            backoff = self._backoff
        self._metrics.backoff.labels(self.target).set(backoff)
        if backoff:
            log.info(
                "login to %s failed %d times in a row; next attempt in %gs", self.target, failures, backoff
            )

    def record(self, outcome: Outcome) -> None:
        if outcome.deferred:
            return
        self._update_backoff(None if outcome.error is None else reason_of(outcome.error))
        self._metrics.duration.labels(self.target).observe(outcome.duration)
        was_up = self._last is not None and self._last.ok
        reason: Reason | None = None
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
            if self._last is None or self._last.ok != outcome.ok:
                self._since = outcome.finished_at
            self._last, self._last_error, self._last_reason = outcome, message, reason

    def result(self) -> ProbeResult:
        """The last result: ``since`` is when the target went up or down (Unix time), ``reason`` why
        the last probe failed (a metric label value)."""
        with self._lock:
            last, error, reason, since = self._last, self._last_error, self._last_reason, self._since
        if last is None:
            return ProbeResult(None, None, None, "", "", None, 0.0)
        return ProbeResult(
            up=last.ok,
            since=since,
            latency_seconds=round(last.duration, 6),
            error=error,
            reason=reason or "",
            checked_at=last.finished_at,
            backoff_seconds=self.backoff_seconds,
        )

    def status(self) -> dict[str, object]:
        """The last result as a mapping, for ``poolwatch check``."""
        return asdict(self.result())
