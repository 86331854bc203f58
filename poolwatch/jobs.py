"""What a scheduled job is: the ``Job`` protocol, its ``Outcome``, and the bounded call that runs it.

A job's ``run()`` does I/O that may hang (a server that accepts TCP and never answers). It runs on a
fresh daemon thread; the scheduler's worker waits at most ``timeout`` for it and then moves on, so one
hung target never holds a worker, and never delays another target's jobs. While a hung run is still
going, the next run of the same job is not started (it would only pile up threads): it is reported
as skipped. A job may also decline a run by raising ``Deferred`` (a probe backing off after failed
logins): that run is counted as skipped too, and not recorded. ``record()`` is called on the
scheduler's worker with the outcome, never by a late run.

While a target's probe backs off after failed logins, the target's other jobs defer their runs too
(``Deferred`` before any connection is opened): a wrong password is then tried by the probe alone, at
its spaced attempts, not by every job at its own interval (log noise, and a lockout or a fail2ban ban
on the server). Each job is handed the probe as its ``Backoff``, an argument like any other, and
checks it with ``TargetJob.defer_while_backing_off()``, the set-up every job of a target shares.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

from poolwatch.errors import CallTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable


class Deferred(Exception):  # noqa: N818 - not an error: the job chose not to act this time
    """Raised by ``Job.run()`` to skip a run without attempting any I/O (e.g. while backing off)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a job ended. ``error`` is None on success."""

    duration: float
    finished_at: float
    error: BaseException | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def deferred(self) -> bool:
        return isinstance(self.error, Deferred)


class Backoff(Protocol):
    """Whether logins to a target are held back now (``Probe`` after failed logins)."""

    @property
    def backing_off(self) -> bool: ...


class _NeverBackingOff:
    backing_off: Final = False


NO_BACKOFF: Final[Backoff] = _NeverBackingOff()

BACKING_OFF: Final = "deferred while the probe backs off after failed logins"


class Job(Protocol):
    """A unit of scheduled work for one target."""

    task: str
    target: str
    interval: float
    timeout: float

    def run(self) -> None:
        """Do the work; raise on failure. May block: it runs on its own thread."""

    def record(self, outcome: Outcome) -> None:
        """Export the outcome (called on the scheduler thread, never concurrently for one job)."""


class TargetJob:
    """What the jobs of one target share: the target, how often a run starts and how long it may
    take, and the probe whose back-off defers them. Subclasses name their ``task`` and define
    ``run()`` and ``record()`` (``Job``)."""

    task: str

    def __init__(
        self, target: str, *, interval: float, timeout: float, backoff: Backoff = NO_BACKOFF
    ) -> None:
        self.target = target
        self.interval = interval
        self.timeout = timeout
        self._logins = backoff

    def defer(self, why: str) -> NoReturn:
        """Decline this run (``Deferred``): it is counted as skipped, and ``record()`` is not called."""
        raise Deferred(f"{self.task} of {self.target}: {why}")

    def defer_while_backing_off(self, before: Callable[[], None] | None = None) -> None:
        """Decline this run, before any connection is opened, while the target's probe backs off
        after failed logins; ``before`` runs first (what a deferred run must still do, since
        ``record()`` will not be called for it)."""
        if self._logins.backing_off:
            if before is not None:
                before()
            self.defer(BACKING_OFF)


class BoundedCall:
    """Runs one call at a time on its own daemon thread and waits for it up to a deadline."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._running: threading.Thread | None = None
        self._done = threading.Event()

    @property
    def busy(self) -> bool:
        return self._running is not None and self._running.is_alive()

    def __call__(self, func: Callable[[], None], timeout: float) -> None:
        """Call ``func``; raise what it raised, or ``CallTimeoutError`` after ``timeout`` seconds."""
        if self.busy:
            raise CallTimeoutError(f"{self._name}: the previous run is still going")
        done = threading.Event()
        box: list[BaseException] = []

        def target() -> None:
            try:
                func()
            except BaseException as exc:
                box.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=target, name=f"poolwatch-{self._name}", daemon=True)
        self._running, self._done = thread, done
        thread.start()
        if not done.wait(timeout):
            raise CallTimeoutError(f"{self._name}: no answer within {timeout:g}s")
        self._running = None
        if box:
            raise box[0]

    def abandon(self) -> None:
        """Release a waiter at shutdown: the daemon thread is left to die with the process."""
        self._done.set()


def run_job(job: Job, call: BoundedCall, clock: Callable[[], float] = time.perf_counter) -> Outcome:
    """Run ``job`` once through ``call`` and describe how it ended (it never raises)."""
    started = clock()
    skipped = call.busy
    try:
        call(job.run, job.timeout)
    except BaseException as exc:
        return Outcome(clock() - started, time.time(), exc, skipped=skipped)
    return Outcome(clock() - started, time.time())
