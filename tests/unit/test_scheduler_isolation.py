"""A tiny version of benchmarks/scale.py's hung-target check, on the real Scheduler with fake jobs:
targets whose runs hang hold no other target's job back, and a hung run of a target removed meanwhile
records nothing. Counts and order, never milliseconds."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from poolwatch.metrics import JobMetrics
from poolwatch.scheduler import Scheduler

if TYPE_CHECKING:
    import pytest

    from poolwatch.jobs import Outcome

HEALTHY, HUNG = 10, 3


class FakeJob:
    """A probe-like job. A hung one blocks in run() until the test releases it."""

    task = "probe"

    def __init__(self, target: str, release: threading.Event | None = None) -> None:
        self.target = target
        self.interval = 0.2
        self.timeout = 30.0 if release is not None else 1.0  # hung runs hold a worker this long
        self._release = release
        self.started = 0
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        with self._lock:
            self.started += 1
        if self._release is not None:
            self._release.wait()

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_hung_targets_do_not_hold_back_the_other_targets_jobs() -> None:
    release = threading.Event()
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    # The daemon's own sizing (the default): fewer workers than targets, hung ones included.
    scheduler = Scheduler(metrics)
    hung = [FakeJob(f"hung{i}", release) for i in range(HUNG)]
    healthy = [FakeJob(f"db{i}") for i in range(HEALTHY)]
    for job in [*hung, *healthy]:  # the hung ones are scheduled first
        scheduler.add(job)
    runner = threading.Thread(target=scheduler.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: all(job.started >= 1 for job in hung))
        # Every healthy target completes five runs while each hung target is still in its first.
        assert wait_until(lambda: all(sum(o.ok for o in job.outcomes) >= 5 for job in healthy)), [
            len(job.outcomes) for job in healthy
        ]
        assert all(job.started == 1 for job in hung), [job.started for job in hung]
        assert all(not job.outcomes for job in hung)  # their one run has not timed out yet
        # Their later ticks were skipped (counted), not started.
        skipped = "poolwatch_job_skipped_total"
        assert all(registry.get_sample_value(skipped, {"task": "probe", "target": j.target}) for j in hung)
        for job in healthy:
            assert all(o.ok and not o.skipped for o in job.outcomes)
    finally:
        release.set()
        scheduler.stop()
        runner.join(10)
    assert not runner.is_alive()


def test_a_run_that_ends_after_its_target_was_removed_records_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload removes a target while its probe hangs: when that run times out, its outcome must not
    bring the removed target's series back (nor land in a rebuilt target's)."""
    caplog.set_level(logging.DEBUG, logger="poolwatch.scheduler")
    dropped = "probe:removed: outcome of a run of a removed job dropped"
    release = threading.Event()
    registry = CollectorRegistry()
    scheduler = Scheduler(JobMetrics(registry), max_workers=2)
    removed, kept = FakeJob("removed", release), FakeJob("kept", release)
    for job in (removed, kept):
        job.timeout = 0.5  # each first run hangs, and times out after 0.5 s
        scheduler.add(job)
    runner = threading.Thread(target=scheduler.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: removed.started >= 1 and kept.started >= 1)
        scheduler.remove_target("removed")
        # The removed target's hung run times out: its outcome is dropped. The kept target's hung
        # run times out and is recorded, and so is its next tick, skipped while the run hangs.
        assert wait_until(lambda: any(r.getMessage() == dropped for r in caplog.records))
        assert wait_until(lambda: len(kept.outcomes) >= 2)
        assert not removed.outcomes
        labels = {"task": "probe", "target": "removed"}
        for name in ("poolwatch_job_failures_total", "poolwatch_job_duration_seconds_count"):
            assert registry.get_sample_value(name, labels) is None, name
    finally:
        release.set()
        scheduler.stop()
        runner.join(10)
