"""APScheduler wiring: one interval job per (task, target), and the wrapper that measures each run.

This is the only module that imports APScheduler. Every job has ``max_instances=1`` and
``coalesce=True`` (a late scheduler runs a job once, not once per missed tick) and a timeout of its
own, enforced by ``poolwatch.jobs.BoundedCall``. Workers only wait for bounded calls, so a hung target
costs one waiting worker for at most its timeout and never delays the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from poolwatch.errors import first_line, translate
from poolwatch.jobs import BoundedCall, Job, run_job

if TYPE_CHECKING:
    from collections.abc import Callable

    from poolwatch.jobs import Outcome
    from poolwatch.metrics import JobMetrics

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class JobStats:
    """What the status page shows of one job: when it last ran and succeeded (Unix time), how many
    runs failed, how many in a row, and the first line of the last error."""

    interval: float
    last_run: float | None = None
    last_success: float | None = None
    failures: int = 0
    failing_for: int = 0
    last_error: str = ""


class Scheduler:
    """Runs jobs at their intervals in the foreground (``run()`` blocks until ``stop()``).

    ``on_record(job, outcome)`` is called after each job recorded an outcome, under the lock that
    keeps a removed target's outcomes out: it must be quick and must not call back into the
    scheduler."""

    def __init__(
        self,
        metrics: JobMetrics,
        *,
        max_workers: int = 32,
        clock: Callable[[], float] = time.monotonic,
        on_record: Callable[[Job, Outcome], None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._on_record = on_record
        self._scheduler = BlockingScheduler(
            executors={"default": ThreadPoolExecutor(max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=dt.timezone.utc,
        )
        self._calls: dict[str, BoundedCall] = {}
        self._stats: dict[str, dict[str, JobStats]] = {}  # target -> task -> stats
        self._lock = threading.Lock()
        self._heartbeat = clock()
        self._stopped = threading.Event()
        self._scheduler.add_job(
            self._beat,
            IntervalTrigger(seconds=HEARTBEAT_INTERVAL),
            id="heartbeat",
            misfire_grace_time=None,
        )

    def add(self, job: Job) -> None:
        """Schedule ``job`` every ``job.interval`` seconds, first run now."""
        job_id = f"{job.task}:{job.target}"
        call = BoundedCall(job_id)
        with self._lock:
            if job_id in self._calls:
                raise ValueError(f"job {job_id} is already scheduled")
            self._calls[job_id] = call
            self._stats.setdefault(job.target, {})[job.task] = JobStats(job.interval)
        self._metrics.add_job(job.task, job.target)
        self._scheduler.add_job(
            self._execute,
            IntervalTrigger(seconds=job.interval),
            args=(job, call),
            id=job_id,
            name=job_id,
            next_run_time=dt.datetime.now(dt.timezone.utc),
            # A run that starts late is still worth doing, up to one interval late.
            misfire_grace_time=max(1, int(job.interval)),
        )

    def remove_target(self, target: str, *, keep_series: bool = False) -> None:
        """Unschedule every job of ``target`` and drop its job series (``keep_series``: leave them,
        for the jobs of a rebuilt target to count on from). Once this returns, no outcome of its
        jobs is recorded, not even of a run still going."""
        with self._lock:
            ids = [job_id for job_id in self._calls if job_id.split(":", 1)[1] == target]
            calls = [self._calls.pop(job_id) for job_id in ids]
            self._stats.pop(target, None)
        for job_id, call in zip(ids, calls, strict=True):
            self._scheduler.remove_job(job_id)
            call.abandon()
            if not keep_series:
                self._metrics.remove_job(job_id.split(":", 1)[0], target)

    def _execute(self, job: Job, call: BoundedCall) -> None:
        if self._stopped.is_set():
            return
        outcome = run_job(job, call, self._clock)
        # A run can end after a reload removed (or rebuilt) its target, and remove_target() releases
        # this wait at once (the outcome then even looks like a success): it must not bring the
        # removed target's series back, or land in its successor's. Recording under the lock
        # remove_target() takes means none is under way or still to come once that returns.
        with self._lock:
            if self._stopped.is_set() or self._calls.get(f"{job.task}:{job.target}") is not call:
                log.debug("%s:%s: outcome of a run of a removed job dropped", job.task, job.target)
                return
            self._record(job, outcome)

    def _record(self, job: Job, outcome: Outcome) -> None:
        labels = (job.task, job.target)
        if outcome.deferred:
            self._metrics.skipped.labels(*labels).inc()
            return
        self._metrics.duration.labels(*labels).observe(outcome.duration)
        if outcome.skipped:
            self._metrics.skipped.labels(*labels).inc()
        if outcome.ok:
            self._metrics.last_success.labels(*labels).set(outcome.finished_at)
        else:
            self._metrics.failures.labels(*labels).inc()
        self._count(job, outcome)
        try:
            job.record(outcome)
            if self._on_record is not None:
                self._on_record(job, outcome)
        except Exception:
            log.exception("recording the outcome of %s:%s failed", *labels)

    def _count(self, job: Job, outcome: Outcome) -> None:
        # Called under self._lock; a new frozen value each time, so readers need no copy.
        tasks = self._stats[job.target]
        stats = tasks[job.task]
        if outcome.error is None:
            tasks[job.task] = replace(
                stats, last_run=outcome.finished_at, last_success=outcome.finished_at, failing_for=0
            )
            return
        tasks[job.task] = replace(
            stats,
            last_run=outcome.finished_at,
            failures=stats.failures + 1,
            failing_for=stats.failing_for + 1,
            last_error=first_line(translate(outcome.error, target=job.target) or outcome.error),
        )

    def stats(self) -> dict[str, dict[str, JobStats]]:
        """The run statistics of every scheduled job: target -> task -> stats."""
        with self._lock:
            return {target: dict(tasks) for target, tasks in self._stats.items()}

    def _beat(self) -> None:
        self._heartbeat = self._clock()
        if self._stopped.is_set() and self._scheduler.state == STATE_RUNNING:
            # stop() raced with start(): finish what it could not.
            self._scheduler.shutdown(wait=False)

    @property
    def healthy(self) -> bool:
        """Running, and its workers still pick up work (the heartbeat job is recent)."""
        recent = self._clock() - self._heartbeat < 4 * HEARTBEAT_INTERVAL
        return self._scheduler.state == STATE_RUNNING and recent and not self._stopped.is_set()

    def run(self) -> None:
        """Block, running jobs, until ``stop()`` is called (from any thread or a signal handler)."""
        if self._stopped.is_set():
            return
        self._heartbeat = self._clock()
        self._scheduler.start()

    def stop(self) -> None:
        """Stop scheduling and release waiting workers; safe to call twice and from any thread."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            call.abandon()
        if self._scheduler.state == STATE_RUNNING:
            self._scheduler.shutdown(wait=False)
