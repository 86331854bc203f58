"""The /status document (schema 1): each target's state, read from the daemon's memory, worst first.

Nothing here does I/O: the probe's last result, the pool's own counters, the census job's last census,
the reaper's last decisions and the scheduler's job statistics are all held in memory by the jobs
that produce them. The document is plain JSON data (the ``TypedDict`` classes below are its schema,
documented in docs/status.md); the HTML page and ``poolwatch status`` both render it, so they show the
same data. What makes a target "critical" or "warning", and the order of targets, is decided here.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypedDict

from poolwatch.assess import RECENT, Severity, assess, health, rank
from poolwatch.census.job import CensusJob
from poolwatch.census.postgres import PostgresCensus
from poolwatch.history import History
from poolwatch.memo import SlotCache
from poolwatch.reaper.job import ReaperJob

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from poolwatch.census.job import Reading
    from poolwatch.census.postgres import Activity
    from poolwatch.config import TargetSettings
    from poolwatch.history import Trend
    from poolwatch.instrument.collector import PoolSource
    from poolwatch.jobs import Job
    from poolwatch.probe import ProbeResult
    from poolwatch.reaper.audit import AuditRecord
    from poolwatch.scheduler import JobStats

SCHEMA_VERSION: Final = 1


class ProblemDoc(TypedDict):
    kind: str
    severity: Severity
    text: str


class PoolDoc(TypedDict):
    used: int
    idle: int
    max: int | None
    size: int
    overflow: int
    pending: int
    timeouts_recent: int
    timeouts_total: int
    leaked: int
    leaks_recent: int
    leaks_total: int
    checkout_timeout_seconds: float
    leak_threshold_seconds: float | None


class SessionDoc(TypedDict):
    pid: int | None
    user: str | None
    application: str | None
    database: str | None
    idle_seconds: float | None
    transaction_seconds: float | None


class CensusDoc(TypedDict):
    taken_at: float
    sessions: int
    by_state: dict[str, int]
    max_connections: int | None
    used_ratio: float | None
    oldest_seconds: dict[str, float]
    oldest_idle_in_transaction: SessionDoc | None


class DecisionDoc(TypedDict):
    decided_at: str
    mode: str
    reason: str
    pid: int
    user: str | None
    database: str | None
    application: str | None
    client_addr: str | None
    idle_seconds: float


class ReaperDoc(TypedDict):
    mode: str
    lease_held: bool
    idle_timeout_seconds: float | None
    idle_in_transaction_timeout_seconds: float | None
    max_per_run: int
    latest: list[DecisionDoc]
    candidates: list[DecisionDoc]
    candidates_total: int


class JobDoc(TypedDict):
    task: str
    interval_seconds: float
    last_run: float | None
    last_success: float | None
    failures: int
    failing_for: int
    last_error: str


class TrendDoc(TypedDict):
    window_seconds: float
    step_seconds: float
    at: list[float]
    used: list[float]
    pending: list[float]
    timeouts: list[float]
    leaks: list[float]
    sessions_at: list[float]
    sessions: list[float]


class TargetDoc(TypedDict):
    name: str
    kind: str
    url: str
    health: Severity
    problems: list[ProblemDoc]
    up: bool | None
    since: float | None
    checked_at: float | None
    latency_seconds: float | None
    error: str
    reason: str
    backoff_seconds: float
    pool: PoolDoc | None
    census: CensusDoc | None
    reaper: ReaperDoc | None
    jobs: list[JobDoc]
    trend: TrendDoc


class CountsDoc(TypedDict):
    critical: int
    warning: int
    unknown: int
    ok: int


class StatusDoc(TypedDict):
    schema_version: int
    version: str
    source: str
    generated_at: float
    healthy: bool
    counts: CountsDoc
    targets: list[TargetDoc]


@dataclass(frozen=True, slots=True)
class Sources:
    """Where one target's status is read from: all of it objects the daemon holds anyway."""

    settings: TargetSettings
    probe: ProbeResult
    pool: PoolSource | None
    jobs: Sequence[Job]
    stats: Mapping[str, JobStats]
    decisions: list[AuditRecord]
    tracker: Tracker


FRESH: Final = 30.0  # seconds a kept target document serves requests without a job outcome


@dataclass(frozen=True, slots=True)
class _Kept:
    version: int
    settings: TargetSettings
    trend: Trend
    made: float
    doc: TargetDoc


class Tracker:
    """What the status keeps of one target between requests: its history (fed by ``observe`` at
    the probe and census cadence), its last census summarised until the next census, and its part
    of the document as made after its last job outcome (``refresh``), which requests take as it is
    (``kept``) until the next outcome: what they show changes only when a job records something."""

    def __init__(self, history: History | None = None) -> None:
        self.history = history if history is not None else History()
        self._lock = threading.Lock()
        self._census: tuple[Reading, CensusDoc] | None = None
        self._version = 0  # outcomes observed: a document made before the last one is not kept
        self._kept: _Kept | None = None

    def kept(self, settings: TargetSettings, now: float, pool: PoolSource | None = None) -> TargetDoc | None:
        """The document made after the last outcome, if it still holds: made for these settings
        (not before a reload rebuilt the target), from the current history, less than ``FRESH``
        seconds ago (what it says of the last minutes, or for how long a target is down, is that
        old at most), and showing ``pool`` as it is now (a job hung with the pool's connections, or
        callers waiting, shows at once: the pool is read, a few microseconds, never the server)."""
        kept = self._kept
        if (
            kept is None
            or kept.version != self._version
            or kept.settings is not settings
            or kept.trend is not self.history.trend()
            or not 0 <= now - kept.made < FRESH
            or (pool is not None and not _same_pool(kept.doc["pool"], pool))
        ):
            return None
        return kept.doc

    def refresh(self, sources: Sources, now: float) -> TargetDoc:
        """The target's document made now, and kept unless an outcome came in meanwhile."""
        version, trend = self._version, self.history.trend()
        doc = target_doc(sources, now)
        with self._lock:
            if version == self._version:
                self._kept = _Kept(version, sources.settings, trend, now, doc)
        return doc

    def observe(self, job: Job, pool: PoolSource | None, at: float) -> None:
        """Sample after ``job`` recorded an outcome (a scheduler thread): the pool after a probe, the
        number of server sessions after a census. Any outcome outdates the kept document."""
        with self._lock:
            self._version += 1
        if isinstance(job, CensusJob):
            reading = job.last()
            if reading is not None:
                self.history.add_sessions(at, int(sum(v for n, _, v in reading.samples if n == CONNECTIONS)))
        elif job.task == "probe" and pool is not None:
            state = pool.state()
            counts = pool.recorder.counts()
            if state is not None:
                self.history.add_pool(at, state.used, counts.pending, counts.timeouts, counts.leaks_total)

    def census(self, job: CensusJob) -> CensusDoc | None:
        """The job's published census, summarised once per census (not per request)."""
        reading = job.last()
        if reading is None:
            return None
        with self._lock:
            if self._census is not None and self._census[0] is reading:
                return self._census[1]
        oldest = job.take.oldest_idle_in_transaction if isinstance(job.take, PostgresCensus) else None
        summary = summarise(reading, oldest)
        with self._lock:
            self._census = (reading, summary)
        return summary


CONNECTIONS: Final = "server_connections"


def summarise(reading: Reading, oldest: Activity | None) -> CensusDoc:
    """A census's samples as the status shows them: sessions by state, limit, oldest ages."""
    by_state: dict[str, int] = {}
    oldest_seconds: dict[str, float] = {}
    limit: int | None = None
    ratio: float | None = None
    for name, labels, value in reading.samples:
        if name == CONNECTIONS:
            by_state[labels[0]] = by_state.get(labels[0], 0) + int(value)
        elif name == "server_oldest_seconds":
            oldest_seconds[labels[0]] = round(value, 3)
        elif name == "server_max_connections":
            limit = int(value)
        elif name == "server_connections_used_ratio":
            ratio = round(value, 4)
    session: SessionDoc | None = None
    if oldest is not None:
        session = {
            "pid": oldest.pid,
            "user": oldest.user,
            "application": oldest.application,
            "database": oldest.database,
            "idle_seconds": oldest.in_state,
            "transaction_seconds": oldest.in_transaction,
        }
    return {
        "taken_at": reading.taken_at,
        "sessions": sum(by_state.values()),
        "by_state": by_state,
        "max_connections": limit,
        "used_ratio": ratio,
        "oldest_seconds": oldest_seconds,
        "oldest_idle_in_transaction": session,
    }


def document(
    targets: Iterable[TargetDoc], *, version: str, source: str, healthy: bool, now: float
) -> StatusDoc:
    """The whole document from each target's part (``target_doc``), targets worst first."""
    docs = sorted(targets, key=rank)
    counts: CountsDoc = {"critical": 0, "warning": 0, "unknown": 0, "ok": 0}
    for doc in docs:
        counts[doc["health"]] += 1
    return {
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "source": source,
        "generated_at": now,
        "healthy": healthy,
        "counts": counts,
        "targets": docs,
    }


def target_doc(sources: Sources, now: float) -> TargetDoc:
    settings, probe = sources.settings, sources.probe
    trend = sources.tracker.history.trend()
    census = reaper = None
    for job in sources.jobs:
        if isinstance(job, CensusJob):
            census = sources.tracker.census(job)
        elif isinstance(job, ReaperJob):
            reaper = reaper_doc(settings.name, job, sources.decisions)
    doc: TargetDoc = {
        "name": settings.name,
        "kind": settings.kind,
        "url": _URLS.get(settings.name, (settings,), settings.display_url),
        "health": "ok",
        "problems": [],
        "up": probe.up,
        "since": probe.since,
        "checked_at": probe.checked_at,
        "latency_seconds": probe.latency_seconds,
        "error": probe.error,
        "reason": probe.reason,
        "backoff_seconds": probe.backoff_seconds,
        "pool": pool_doc(sources, trend, now),
        "census": census,
        "reaper": reaper,
        "jobs": [
            _cached_job_doc(settings.name, task, stats) for task, stats in sorted(sources.stats.items())
        ],
        "trend": {
            "window_seconds": sources.tracker.history.window,
            "step_seconds": sources.tracker.history.step,
            "at": trend.at,
            "used": trend.used,
            "pending": trend.pending,
            "timeouts": trend.timeouts,
            "leaks": trend.leaks,
            "sessions_at": trend.sessions_at,
            "sessions": trend.sessions,
        },
    }
    doc["problems"] = assess(doc, settings, now)
    doc["health"] = health(doc)
    return doc


def pool_doc(sources: Sources, trend: Trend, now: float) -> PoolDoc | None:
    if sources.pool is None:
        return None
    state = sources.pool.state()
    if state is None:
        return None
    counts = sources.pool.recorder.counts()
    settings = sources.settings.pool
    since = now - RECENT
    return {
        "used": state.used,
        "idle": state.idle,
        "max": None if state.max_connections == float("inf") else int(state.max_connections),
        "size": state.size,
        "overflow": state.overflow,
        "pending": counts.pending,
        "timeouts_recent": _increase(trend.at, trend.timeouts, counts.timeouts, since),
        "timeouts_total": counts.timeouts,
        "leaked": counts.leaked,
        "leaks_recent": _increase(trend.at, trend.leaks, counts.leaks_total, since),
        "leaks_total": counts.leaks_total,
        "checkout_timeout_seconds": settings.timeout,
        "leak_threshold_seconds": settings.leak_threshold,
    }


def _same_pool(doc: PoolDoc | None, pool: PoolSource) -> bool:
    """Whether ``doc`` still shows the pool's numbers now (sizes, waiting callers, running totals)."""
    state = pool.state()
    if doc is None or state is None:
        return doc is None and state is None
    counts = pool.recorder.counts()
    return (
        doc["used"] == state.used
        and doc["idle"] == state.idle
        and doc["size"] == state.size
        and doc["overflow"] == state.overflow
        and doc["pending"] == counts.pending
        and doc["timeouts_total"] == counts.timeouts
        and doc["leaked"] == counts.leaked
        and doc["leaks_total"] == counts.leaks_total
    )


def _increase(at: list[float], totals: list[float], now_total: int, since: float) -> int:
    """How much a running total grew since ``since``: from the last sample at or before it to its value
    now; from 0 when the history starts later (a pool's totals start at 0 when it is built). A drop
    means the total restarted from 0 (the target was rebuilt by a reload)."""
    start = bisect.bisect_right(at, since)
    values = [*totals[start - 1 :]] if start else [0.0, *totals]
    values.append(float(now_total))
    if values == sorted(values):  # the usual case, checked in C
        return int(values[-1] - values[0])
    return int(sum(b - a if b >= a else b for a, b in itertools.pairwise(values)))


def reaper_doc(target: str, job: ReaperJob, decisions: list[AuditRecord]) -> ReaperDoc:
    """The reaper's part, made again only when its decisions, candidates or lease change (the same
    dict is shared by every document until then, which must not change it)."""
    reaper = job.reaper
    candidates, held = reaper.candidates, reaper.lease.held
    inputs = (job, candidates, held, *decisions)
    return _REAPERS.get(target, inputs, lambda: _reaper_doc(job, decisions, held))


_REAPERS: SlotCache[ReaperDoc] = SlotCache()


def _reaper_doc(job: ReaperJob, decisions: list[AuditRecord], held: bool) -> ReaperDoc:
    reaper = job.reaper
    policy = reaper.policy
    candidates = reaper.candidates
    return {
        "mode": "dry_run" if reaper.dry_run else "enforce",
        "lease_held": held,
        "idle_timeout_seconds": policy.idle_timeout,
        "idle_in_transaction_timeout_seconds": policy.idle_in_transaction_timeout,
        "max_per_run": policy.max_per_run,
        "latest": [decision_doc(record) for record in decisions],
        "candidates": [decision_doc(record) for record in candidates.first],
        "candidates_total": candidates.total,
    }


def decision_doc(record: AuditRecord) -> DecisionDoc:
    # Never the query text: it may hold literals (a password in ALTER ROLE, say).
    return {
        "decided_at": record.decided_at,
        "mode": record.mode,
        "reason": record.reason,
        "pid": record.pid,
        "user": record.username,
        "database": record.database,
        "application": record.application,
        "client_addr": record.client_addr,
        "idle_seconds": round(record.idle_seconds, 3),
    }


_JOBS: SlotCache[JobDoc] = SlotCache()
_URLS: SlotCache[str] = SlotCache()  # per target's (frozen) settings: parsing a URL is not free


def _cached_job_doc(target: str, task: str, stats: JobStats) -> JobDoc:
    """Made once per ``JobStats`` (the scheduler makes a new one after each run)."""
    return _JOBS.get((target, task), (stats,), lambda: job_doc(task, stats))


def job_doc(task: str, stats: JobStats) -> JobDoc:
    return {
        "task": task,
        "interval_seconds": stats.interval,
        "last_run": stats.last_run,
        "last_success": stats.last_success,
        "failures": stats.failures,
        "failing_for": stats.failing_for,
        "last_error": stats.last_error if stats.failing_for else "",
    }
