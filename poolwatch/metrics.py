"""Every metric family poolwatch exports, created on a registry that is passed in.

Nothing here registers on prometheus_client's global registry at import time: the daemon, each test
and each embedding application build their own. Series whose label values are known in advance are
created at start-up so they exist at 0 before the first event (Prometheus' ``rate()`` needs that).
"""

from __future__ import annotations

import contextlib
import platform
import threading
from typing import TYPE_CHECKING, Final

import apscheduler
import redis
import sqlalchemy
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from poolwatch._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client import Metric

NAMESPACE: Final = "poolwatch"

# Sub-millisecond resolution at the low end (a pooled checkout takes ~20 us), up to 30 s at the top
# (the default pool timeout); roughly x2.5 steps keep the bucket count, and so the series count, low.
LATENCY_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
JOB_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

PROBE_FAILURE_REASONS: Final = (
    "auth",
    "refused",
    "timeout",
    "dns",
    "reset",
    "too_many_connections",
    "pool_timeout",
    "other",
)


class ProbeMetrics:
    """``poolwatch_up``, probe latency and failures, per target."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "up",
            "1 if the last probe of the target succeeded, else 0.",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.duration = Histogram(
            "probe_duration_seconds",
            "Round trip of a probe: pooled checkout plus SELECT 1 or PING.",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.failures = Counter(
            "probe_failures",
            "Probes that failed, by reason.",
            ["target", "reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.backoff = Gauge(
            "probe_backoff_seconds",
            "Seconds between probe attempts while backing off after authentication failures; 0 if not.",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
        )

    def add_target(self, target: str) -> None:
        self.up.labels(target).set(0)
        self.backoff.labels(target).set(0)
        self.duration.labels(target)
        for reason in PROBE_FAILURE_REASONS:
            self.failures.labels(target, reason)

    def remove_target(self, target: str) -> None:
        _remove(self.up, [(target,)])
        _remove(self.backoff, [(target,)])
        _remove(self.duration, [(target,)])
        _remove(self.failures, [(target, reason) for reason in PROBE_FAILURE_REASONS])


class JobMetrics:
    """Scheduler health: duration, failures and last success of every job.

    The label is ``task``, not ``job``: ``job`` is the label Prometheus itself attaches to every
    scraped series, and a metric carrying its own would be renamed to ``exported_job``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "job_duration_seconds",
            "Wall time of scheduled job runs.",
            ["task", "target"],
            namespace=NAMESPACE,
            registry=registry,
            buckets=JOB_BUCKETS,
        )
        self.failures = Counter(
            "job_failures",
            "Scheduled job runs that raised or timed out.",
            ["task", "target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.last_success = Gauge(
            "job_last_success_timestamp_seconds",
            "Unix time of the last successful run of a job.",
            ["task", "target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.skipped = Counter(
            "job_skipped",
            "Job runs not started: the previous run was still going, or the job is backing off.",
            ["task", "target"],
            namespace=NAMESPACE,
            registry=registry,
        )

    def add_job(self, task: str, target: str) -> None:
        self.duration.labels(task, target)
        self.failures.labels(task, target)
        self.last_success.labels(task, target).set(0)
        self.skipped.labels(task, target)

    def remove_job(self, task: str, target: str) -> None:
        for family in (self.duration, self.failures, self.last_success, self.skipped):
            _remove(family, [(task, target)])


class BuildMetrics:
    """``poolwatch_build_info``: 1, with the versions that matter when reading a bug report."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Gauge(
            "build_info",
            "poolwatch build and runtime versions; always 1.",
            ["version", "python_version", "sqlalchemy_version", "redis_py_version", "apscheduler_version"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.info.labels(
            __version__,
            platform.python_version(),
            sqlalchemy.__version__,
            redis.__version__,
            getattr(apscheduler, "__version__", "3"),
        ).set(1)


class CensusMetrics:
    """Server-side session counts and ages per target, published by census jobs in ``record()``.

    Label sets change from one census to the next (a database empties, an application goes away):
    ``publish`` removes the series the new census no longer has, so a gauge never shows a stale count.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "server_connections",
            "Server-side sessions by state, database, user and application "
            "(names not configured are folded into the empty value).",
            ["target", "state", "database", "user", "application"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.pool_connections = Gauge(
            "server_pool_connections",
            "Server-side sessions of a known pool (by application_name / client name), by state.",
            ["target", "pool", "state"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.max_connections = Gauge(
            "server_max_connections",
            "Sessions the server accepts from ordinary users "
            "(max_connections less reserved slots; Redis maxclients).",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.used_ratio = Gauge(
            "server_connections_used_ratio",
            "Client sessions divided by server_max_connections.",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.oldest = Gauge(
            "server_oldest_seconds",
            "Longest time a session has been in its current state, by state.",
            ["target", "state"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.oldest_transaction = Gauge(
            "server_oldest_transaction_seconds",
            "Age of the oldest open transaction (0 when none).",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.idle_over = Gauge(
            "server_idle_connections",
            "Sessions idle longer than each configured threshold.",
            ["target", "idle_over"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.families: dict[str, Gauge] = {
            "server_connections": self.connections,
            "server_pool_connections": self.pool_connections,
            "server_max_connections": self.max_connections,
            "server_connections_used_ratio": self.used_ratio,
            "server_oldest_seconds": self.oldest,
            "server_oldest_transaction_seconds": self.oldest_transaction,
            "server_idle_connections": self.idle_over,
        }
        self._shown: dict[str, set[tuple[str, tuple[str, ...]]]] = {}

    def publish(self, target: str, samples: Iterable[tuple[str, tuple[str, ...], float]]) -> None:
        """Set ``target``'s series to ``samples`` (family name, labels after target, value) and drop
        the series of ``target`` that are not among them."""
        shown: set[tuple[str, tuple[str, ...]]] = set()
        for name, labels, value in samples:
            self.families[name].labels(target, *labels).set(value)
            shown.add((name, labels))
        for name, labels in self._shown.get(target, set()) - shown:
            _remove(self.families[name], [(target, *labels)])
        self._shown[target] = shown

    def remove_target(self, target: str) -> None:
        self.publish(target, ())
        self._shown.pop(target, None)


REAPER_REASONS: Final = ("idle", "idle_in_transaction")
REAPER_MODES: Final = ("enforce", "dry_run")


class ReaperMetrics:
    """Reaper decisions, errors and leadership per target; the audit spool (process-wide)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.terminated = Counter(
            "reaper_terminated",
            "Sessions terminated (mode=enforce) or that would have been (mode=dry_run), by reason.",
            ["target", "reason", "mode"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.errors = Counter(
            "reaper_errors",
            "Reaper runs that failed, and terminations that raised.",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.leader = Gauge(
            "reaper_leader",
            "1 while this replica holds the target's reaper lease.",
            ["target"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.spooled = Gauge(
            "audit_spooled_records",
            "Audit records waiting in the local spool for the audit database.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.dropped = Counter(
            "audit_dropped_records",
            "Audit records dropped because the spool was full.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.written = Counter(
            "audit_written",
            "Audit records written to the audit database.",
            namespace=NAMESPACE,
            registry=registry,
        )

    def add_target(self, target: str) -> None:
        for reason in REAPER_REASONS:
            for mode in REAPER_MODES:
                self.terminated.labels(target, reason, mode)
        self.errors.labels(target)
        self.leader.labels(target).set(0)

    def remove_target(self, target: str) -> None:
        _remove(self.terminated, [(target, r, m) for r in REAPER_REASONS for m in REAPER_MODES])
        _remove(self.errors, [(target,)])
        _remove(self.leader, [(target,)])


class Metrics:
    """All of the daemon's metric families on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.build = BuildMetrics(self.registry)
        self.probe = ProbeMetrics(self.registry)
        self.jobs = JobMetrics(self.registry)
        self.census = CensusMetrics(self.registry)
        self.reaper = ReaperMetrics(self.registry)
        self.pgbouncer = PgBouncerMetrics(self.registry)
        self.targets = TargetMetrics(self.registry)


def _remove(family: Gauge | Counter | Histogram, label_sets: Iterable[tuple[str, ...]]) -> None:
    for labels in label_sets:
        with contextlib.suppress(KeyError):
            family.remove(*labels)


# --- PgBouncer (admin console) and target kinds -------------------------------------------------
# A separate section: one table of families, rendered by a collector from the last stats per target.

_CONNECTIONS = ("database", "user", "state")
PGBOUNCER_FAMILIES: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    # name: (type, help, labels after target)
    "pgbouncer_client_connections": (
        "gauge",
        "Client connections to PgBouncer by pool and state (SHOW POOLS cl_*); waiting = no server free.",
        _CONNECTIONS,
    ),
    "pgbouncer_server_connections": (
        "gauge",
        "PgBouncer's connections to the server by pool and state (SHOW POOLS sv_*).",
        _CONNECTIONS,
    ),
    "pgbouncer_client_max_wait_seconds": (
        "gauge",
        "How long the oldest waiting client of the pool has waited (SHOW POOLS maxwait).",
        ("database", "user"),
    ),
    "pgbouncer_pool_mode": (
        "gauge",
        "1 per pool, labelled with its pool mode.",
        ("database", "user", "mode"),
    ),
    "pgbouncer_database_pool_size": ("gauge", "Server connections per pool of the database.", ("database",)),
    "pgbouncer_database_min_pool_size": ("gauge", "Minimum pool size of the database.", ("database",)),
    "pgbouncer_database_reserve_pool_size": ("gauge", "Extra connections when clients wait.", ("database",)),
    "pgbouncer_database_max_connections": (
        "gauge",
        "Most server connections for the database (max_db_connections; 0 = no limit).",
        ("database",),
    ),
    "pgbouncer_database_current_connections": ("gauge", "Server connections of the database.", ("database",)),
    "pgbouncer_database_paused": ("gauge", "1 if the database is paused.", ("database",)),
    "pgbouncer_database_disabled": ("gauge", "1 if the database is disabled.", ("database",)),
    "pgbouncer_transactions": ("counter", "Transactions pooled (SHOW STATS).", ("database",)),
    "pgbouncer_queries": ("counter", "Queries pooled (SHOW STATS).", ("database",)),
    "pgbouncer_received_bytes": ("counter", "Bytes received from clients.", ("database",)),
    "pgbouncer_sent_bytes": ("counter", "Bytes sent to clients.", ("database",)),
    "pgbouncer_transaction_seconds": ("counter", "Time spent in transactions.", ("database",)),
    "pgbouncer_query_seconds": ("counter", "Time spent running queries.", ("database",)),
    "pgbouncer_client_wait_seconds": ("counter", "Time clients spent waiting for a server.", ("database",)),
    "pgbouncer_server_assignments": ("counter", "Server connections assigned to clients.", ("database",)),
    "pgbouncer_client_parses": ("counter", "Prepared-statement Parse messages from clients.", ("database",)),
    "pgbouncer_server_parses": ("counter", "Parse messages sent to the server.", ("database",)),
    "pgbouncer_binds": ("counter", "Prepared statements bound for execution.", ("database",)),
    "pgbouncer_list_items": ("gauge", "Items in each of PgBouncer's internal lists (SHOW LISTS).", ("list",)),
    "pgbouncer_config_max_client_connections": ("gauge", "PgBouncer's max_client_conn.", ()),
    "pgbouncer_config_max_user_connections": ("gauge", "PgBouncer's max_user_connections.", ()),
    "pgbouncer_config_max_db_connections": ("gauge", "PgBouncer's max_db_connections.", ()),
    "pgbouncer_config_default_pool_size": ("gauge", "PgBouncer's default_pool_size.", ()),
    "pgbouncer_version_info": ("gauge", "1, labelled with PgBouncer's version.", ("version",)),
}


class PgBouncerMetrics:
    """``poolwatch_pgbouncer_*``: the last stats of each PgBouncer target, rendered at scrape time.

    Counters are PgBouncer's own totals (they restart with it, which ``rate()`` handles), so they are
    exported as they are, not counted here. ``publish`` replaces a target's samples whole.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, list[tuple[str, tuple[str, ...], float]]] = {}
        registry.register(self)

    def publish(self, target: str, samples: Iterable[tuple[str, tuple[str, ...], float]]) -> None:
        rows = [(name, labels, value) for name, labels, value in samples if name in PGBOUNCER_FAMILIES]
        with self._lock:
            if rows:
                self._samples[target] = rows
            else:
                self._samples.pop(target, None)

    def remove_target(self, target: str) -> None:
        self.publish(target, ())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            current = dict(self._samples)
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, (kind, documentation, labels) in PGBOUNCER_FAMILIES.items():
            make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[name] = make(f"{NAMESPACE}_{name}", documentation, labels=["target", *labels])
        for target, rows in sorted(current.items()):
            for name, labels, value in rows:
                families[name].add_metric([target, *labels], value)
        yield from families.values()


class TargetMetrics:
    """``poolwatch_target_info{target,kind}``: 1 per configured target, so dashboards and alerts can
    select the targets of one kind (the MySQL and PgBouncer rows)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._kinds: dict[str, str] = {}
        self.info = Gauge(
            "target_info",
            "1 per configured target, labelled with its kind.",
            ["target", "kind"],
            namespace=NAMESPACE,
            registry=registry,
        )

    def add_target(self, target: str, kind: str) -> None:
        self.remove_target(target)
        self._kinds[target] = kind
        self.info.labels(target, kind).set(1)

    def remove_target(self, target: str) -> None:
        kind = self._kinds.pop(target, None)
        if kind is not None:
            _remove(self.info, [(target, kind)])
