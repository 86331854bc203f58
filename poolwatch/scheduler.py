"""APScheduler wiring: one interval job per (task, target), and the wrapper that measures each run.

This is the only module that imports APScheduler. It only keeps time: every job has
``max_instances=1`` and ``coalesce=True`` (a late scheduler runs a job once, not once per missed
tick), and its executor runs on APScheduler's own loop thread, where a job's function only hands the
run to ``poolwatch.workers.Workers``: a few reused threads, each run with its own timeout, which a
watchdog enforces by reporting the run as timed out and replacing its worker. So a hung target holds
one thread until its call returns and never delays the others, and no thread is started per run.
While a run is still going (hung, or queued behind others), the next one of the same job is not
started: it is reported as skipped, as is a run the job declines (``Deferred``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from poolwatch.errors import CallTimeoutError, first_line, translate
from poolwatch.jobs import Outcome
from poolwatch.workers import Workers

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from poolwatch.jobs import Job
    from poolwatch.metrics import JobMetrics

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0
# Runs are short (a probe, a census query): a few workers keep up with hundreds of targets on a
# 5 s tick, and a hung target takes a thread of its own (the watchdog's replacement), not one of these.
DEFAULT_WORKERS = 8


class _Run:
    """One run of a job: ``settled`` once its outcome was recorded, by its worker when it returned
    or by the watchdog when it ran past its timeout (it returns later, or never)."""

    __slots__ = ("job", "settled", "started")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.started = 0.0  # set by the worker that takes it
        self.settled = False


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

    ``on_record(job, outcome, stats)`` is called after each job recorded an outcome, with the run
    statistics of the job's target (task -> stats, as ``stats()`` would give them), under the lock
    that keeps a removed target's outcomes out: it must be quick and must not call back into the
    scheduler."""

    def __init__(
        self,
        metrics: JobMetrics,
        *,
        max_workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.monotonic,
        on_record: Callable[[Job, Outcome, Mapping[str, JobStats]], None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._on_record = on_record
        self._workers = Workers(max_workers, name="poolwatch-job", clock=clock)
        self._scheduler = BlockingScheduler(
            # Inline: a job's function only queues the run for the workers.
            executors={"default": DebugExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=dt.timezone.utc,
        )
        # job id -> its current run (None between runs); an id's presence says the job is scheduled.
        self._runs: dict[str, _Run | None] = {}
        self._stats: dict[str, dict[str, JobStats]] = {}  # target -> task -> stats
        self._lock = threading.Lock()
        self._heartbeat = clock()
        self._stopped = threading.Event()
        self._scheduler.add_job(
            # Through the workers: the heartbeat says they still pick up work.
            lambda: self._workers.submit(self._beat, HEARTBEAT_INTERVAL, lambda: None),
            IntervalTrigger(seconds=HEARTBEAT_INTERVAL),
            id="heartbeat",
            misfire_grace_time=None,
        )

    def add(self, job: Job) -> None:
        """Schedule ``job`` every ``job.interval`` seconds, first run now."""
        job_id = f"{job.task}:{job.target}"
        with self._lock:
            if job_id in self._runs:
                raise ValueError(f"job {job_id} is already scheduled")
            self._runs[job_id] = None
            self._stats.setdefault(job.target, {})[job.task] = JobStats(job.interval)
        self._metrics.add_job(job.task, job.target)
        self._scheduler.add_job(
            self._execute,
            IntervalTrigger(seconds=job.interval),
            args=(job,),
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
            ids = [job_id for job_id in self._runs if job_id.split(":", 1)[1] == target]
            for job_id in ids:
                del self._runs[job_id]  # a run still going records nothing when it ends
            self._stats.pop(target, None)
        for job_id in ids:
            self._scheduler.remove_job(job_id)
            if not keep_series:
                self._metrics.remove_job(job_id.split(":", 1)[0], target)

    def _execute(self, job: Job) -> None:
        """On APScheduler's loop thread: queue a run, or count a skipped one (quick either way)."""
        job_id = f"{job.task}:{job.target}"
        with self._lock:
            if self._stopped.is_set() or job_id not in self._runs:
                return
            previous = self._runs[job_id]
            if previous is not None:
                # Still going: starting another would only pile up runs on a target that does not
                # answer. Within its timeout (or still queued) that is only a skipped tick; past
                # it, the skipped run fails too, as the timed-out one did.
                if not previous.settled:
                    self._metrics.skipped.labels(job.task, job.target).inc()
                    return
                error = CallTimeoutError(f"{job_id}: the previous run is still going")
                self._record(job, Outcome(0.0, time.time(), error, skipped=True))
                return
            run = self._runs[job_id] = _Run(job)
        self._workers.submit(lambda: self._call(run), job.timeout, lambda: self._give_up(run))

    def _call(self, run: _Run) -> None:
        """On a worker: run the job and record how it ended, unless the watchdog already did."""
        job = run.job
        started = run.started = self._clock()
        error: BaseException | None = None
        try:
            job.run()
        except BaseException as exc:
            error = exc
        outcome = Outcome(self._clock() - started, time.time(), error)
        with self._lock:
            if not self._current(run):
                return
            self._runs[f"{job.task}:{job.target}"] = None  # the next run may start
            if not run.settled:
                run.settled = True
                self._record(job, outcome)

    def _give_up(self, run: _Run) -> None:
        """On the watchdog: the run is past its timeout. Record that; the run stays current, so
        the job's next ticks are skipped while it still hangs."""
        job = run.job
        with self._lock:
            if run.settled or not self._current(run):
                return
            run.settled = True
            error = CallTimeoutError(f"{job.task}:{job.target}: no answer within {job.timeout:g}s")
            self._record(job, Outcome(self._clock() - run.started, time.time(), error))

    def _current(self, run: _Run) -> bool:
        # Called under self._lock. A run can end after a reload removed (or rebuilt) its target:
        # its outcome must not bring the removed target's series back, or land in its successor's.
        job = run.job
        if self._stopped.is_set():
            return False
        if self._runs.get(f"{job.task}:{job.target}") is not run:
            log.debug("%s:%s: outcome of a run of a removed job dropped", job.task, job.target)
            return False
        return True

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
                self._on_record(job, outcome, dict(self._stats.get(job.target, {})))
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
        self._workers.stop()
        if self._scheduler.state == STATE_RUNNING:
            self._scheduler.shutdown(wait=False)
