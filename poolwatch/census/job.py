"""The census job: ``run()`` takes a census on its own thread, ``record()`` publishes it as gauges.

A census that fails (or times out) withdraws the target's census series: a count from a server we
can no longer see would be a guess. ``poolwatch_job_last_success_timestamp_seconds{task="census"}``
says when the last good one was taken. While the target's probe backs off after failed logins the
census is deferred (no connection) and its series are withdrawn the same way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from poolwatch.errors import first_line, translate
from poolwatch.jobs import NO_BACKOFF, TargetJob

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from poolwatch.jobs import Backoff, Outcome

log = logging.getLogger(__name__)

Sample = tuple[str, tuple[str, ...], float]


class Publisher(Protocol):
    """Where a census lands: ``CensusMetrics``, or ``PgBouncerMetrics`` for PgBouncer's stats."""

    def publish(self, target: str, samples: Iterable[Sample]) -> None: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """The census the job publishes now, and when it was taken (Unix time)."""

    samples: list[Sample]
    taken_at: float


class PublishingJob(TargetJob):
    """A scheduled job that reads a target and publishes samples. ``take`` does the I/O and returns
    the samples to publish; ``backoff`` (the target's probe) defers runs while logins to the target
    are held back. ``last()`` is what is published now, for the status page."""

    task = "census"

    def __init__(
        self,
        target: str,
        take: Callable[[], list[Sample]],
        metrics: Publisher,
        *,
        interval: float,
        timeout: float,
        backoff: Backoff = NO_BACKOFF,
    ) -> None:
        super().__init__(target, interval=interval, timeout=timeout, backoff=backoff)
        self.take = take
        self._metrics = metrics
        self._lock = threading.Lock()
        self._samples: list[Sample] | None = None
        self._published: Reading | None = None
        self._failing = False

    def run(self) -> None:
        # record() is not called for a deferred run, so the series are withdrawn here: a count from a
        # server we cannot log in to would be a guess. (record() of the previous run has returned:
        # the scheduler never overlaps two calls for one job.)
        self.defer_while_backing_off(before=self._withdraw)
        samples = self.take()
        with self._lock:
            self._samples = samples

    def record(self, outcome: Outcome) -> None:
        with self._lock:
            samples, self._samples = self._samples, None
        if outcome.ok and samples is not None:
            self._metrics.publish(self.target, samples)
            with self._lock:
                self._published = Reading(samples, outcome.finished_at)
            if self._failing:
                log.info("census of %s works again", self.target)
            self._failing = False
            return
        self._withdraw()
        if not self._failing and outcome.error is not None:
            translated = translate(outcome.error, target=self.target)
            log.warning("census of %s failed: %s", self.target, first_line(translated or outcome.error))
        self._failing = True

    def _withdraw(self) -> None:
        self._metrics.publish(self.target, ())
        with self._lock:
            self._published = None

    def last(self) -> Reading | None:
        """The census published now; None while none is (not taken yet, failing, backing off)."""
        with self._lock:
            return self._published


class CensusJob(PublishingJob):
    """A scheduled census of one target's server-side sessions."""

    task = "census"


class PgBouncerJob(PublishingJob):
    """The stats job of a PgBouncer target: the same life as a census, from its admin console (not a
    census of sessions: the status page does not summarise it as one)."""

    task = "pgbouncer"
