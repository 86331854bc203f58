"""Every metric family poolwatch exports, defined once in ``CATALOGUE`` and built on a registry passed in.

``CATALOGUE`` lists each family (name, type, help, labels, unit, buckets): the daemon's
prometheus_client metrics below are built from it with ``family()``, the pool collector
(instrument/collector.py) builds its scrape-time families and its fast-render ``Rows`` from it, and a
metrics reference can be generated from it. Nothing here registers on prometheus_client's global
registry at import time: the daemon, each test and each embedding application build their own.
Series whose label values are known in advance are created at start-up so they exist at 0 before the
first event (Prometheus' ``rate()`` needs that).
"""

from __future__ import annotations

import contextlib
import platform
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from poolwatch._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client.metrics_core import Metric

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
# A probe is one round trip (SELECT 1 or PING, ~0.5-5 ms on a LAN) up to its timeout (5 s by default):
# ten buckets tell a healthy server from a slow or stalling one.
PROBE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0)
# Job runs only need to show "quick", "slow" and "near its timeout": three jobs per target made the
# 13-bucket layout a quarter of a target's series.
JOB_BUCKETS: Final = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0)

PROBE_FAILURE_REASONS: Final = ("auth", "refused", "timeout", "dns", "reset", "pool_timeout", "other")
REAPER_REASONS: Final = ("idle", "idle_in_transaction")
REAPER_MODES: Final = ("enforce", "dry_run")

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family: what Prometheus shows for it (``name`` without the ``poolwatch_`` prefix
    and, for a counter, without ``_total``, as prometheus_client takes it)."""

    name: str
    type: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] | None = None
    group: str = ""  # where it comes from: pool, probe, job, build, census, reaper, audit

    @property
    def full_name(self) -> str:
        """The family name on /metrics (counters add ``_total`` to each sample)."""
        return f"{NAMESPACE}_{self.name}"

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for this family."""
        if self.type == "counter":
            return (f"{self.full_name}_total",)
        if self.type == "histogram":
            return tuple(f"{self.full_name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        return (self.full_name,)

    def scrape_family(self) -> Metric:
        """An empty prometheus_client metric family, for a scrape-time collector to fill."""
        kinds = {
            "counter": CounterMetricFamily,
            "gauge": GaugeMetricFamily,
            "histogram": HistogramMetricFamily,
        }
        family: Metric = kinds[self.type](self.full_name, self.help, labels=list(self.labels))
        return family


def _spec(
    group: str, name: str, kind: Kind, help_: str, labels: tuple[str, ...] = (), **more: Any
) -> MetricSpec:
    unit = "seconds" if "seconds" in name else "ratio" if name.endswith("_ratio") else ""
    return MetricSpec(name, kind, help_, labels, unit=unit, group=group, **more)


# Pool series name their pool and the server it connects to (``host:port/database``, credential-free:
# serverlabel.py), the label census series share, so fleet-wide ceilings meet the server's limit.
_POOL = ("pool", "server")
# The use-time histogram and leak counts also say what held the connection: a bounded label, empty
# when the application names no holder (Prometheus treats an empty label as no label).
_HELD = ("pool", "server", "holder")
_TARGET = ("target",)
# Census series also name the server (``host:port/database``, as pool series do: serverlabel.py).
_CENSUS = ("target", "server")
_JOB = ("task", "target")

# The pool families, in the order the collector emits them (instrument/collector.py reads each).
POOL_METRICS: Final = (
    _spec(
        "pool", "pool_connections", "gauge", "Open pooled connections by state.", ("pool", "server", "state")
    ),
    _spec("pool", "pool_max_connections", "gauge", "Most connections the pool may open.", _POOL),
    _spec("pool", "pool_size", "gauge", "Persistent size of the pool (connections kept when idle).", _POOL),
    _spec("pool", "pool_min_idle", "gauge", "Idle connections housekeeping keeps open.", _POOL),
    _spec("pool", "pool_overflow", "gauge", "Overflow connections open beyond the pool size.", _POOL),
    _spec("pool", "pool_pending_requests", "gauge", "Callers waiting for a connection now.", _POOL),
    _spec(
        "pool",
        "pool_wait_seconds",
        "histogram",
        "Checkout latency: request to connection handed out (queueing, connecting, pre-ping).",
        _POOL,
        buckets=LATENCY_BUCKETS,
    ),
    _spec(
        "pool",
        "pool_use_seconds",
        "histogram",
        "How long connections were held by callers, by holder (route template or job).",
        _HELD,
        buckets=LATENCY_BUCKETS,
    ),
    _spec(
        "pool",
        "pool_create_seconds",
        "histogram",
        "Time to open a new connection.",
        _POOL,
        buckets=LATENCY_BUCKETS,
    ),
    _spec("pool", "pool_checkouts", "counter", "Successful checkouts.", _POOL),
    _spec("pool", "pool_timeouts", "counter", "Checkouts that timed out waiting (pool exhausted).", _POOL),
    _spec(
        "pool",
        "pool_connect_errors",
        "counter",
        "Failed attempts to open a connection, by reason.",
        ("pool", "server", "reason"),
    ),
    _spec("pool", "pool_closed", "counter", "Connections closed, by reason.", ("pool", "server", "reason")),
    _spec(
        "pool",
        "pool_leaked_connections",
        "gauge",
        "Connections held longer than leak_threshold now, by holder.",
        _HELD,
    ),
    _spec(
        "pool",
        "pool_leaks",
        "counter",
        "Connections ever held longer than leak_threshold (counted at the latest on return), by holder.",
        _HELD,
    ),
    _spec(
        "pool",
        "instrumentation_errors",
        "counter",
        "Failures of poolwatch's own pool hooks (never raised to the host).",
        _POOL,
    ),
    _spec(
        "pool",
        "pool_inherited_checkouts",
        "counter",
        "Checkouts from a pool created in another process before a fork (connections shared).",
        _POOL,
    ),
)

PROBE_UP = _spec("probe", "up", "gauge", "1 if the last probe of the target succeeded, else 0.", _TARGET)
PROBE_DURATION = _spec(
    "probe",
    "probe_duration_seconds",
    "histogram",
    "Round trip of a probe: pooled checkout plus SELECT 1 or PING.",
    _TARGET,
    buckets=PROBE_BUCKETS,
)
PROBE_FAILURES = _spec(
    "probe", "probe_failures", "counter", "Probes that failed, by reason.", ("target", "reason")
)
PROBE_BACKOFF = _spec(
    "probe",
    "probe_backoff_seconds",
    "gauge",
    "Seconds between probe attempts while backing off after authentication failures; 0 if not.",
    _TARGET,
)
JOB_DURATION = _spec(
    "job", "job_duration_seconds", "histogram", "Wall time of scheduled job runs.", _JOB, buckets=JOB_BUCKETS
)
JOB_FAILURES = _spec("job", "job_failures", "counter", "Scheduled job runs that raised or timed out.", _JOB)
JOB_LAST_SUCCESS = _spec(
    "job",
    "job_last_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful run of a job.",
    _JOB,
)
JOB_SKIPPED = _spec(
    "job",
    "job_skipped",
    "counter",
    "Job runs not started: the previous run was still going, or the job is backing off.",
    _JOB,
)
BUILD_INFO = _spec(
    "build",
    "build_info",
    "gauge",
    "poolwatch build and runtime versions; always 1.",
    ("version", "python_version", "sqlalchemy_version", "redis_py_version", "apscheduler_version"),
)
SERVER_CONNECTIONS = _spec(
    "census",
    "server_connections",
    "gauge",
    "Server-side sessions by state, database, user and application "
    "(names not configured are folded into the empty value).",
    ("target", "server", "state", "database", "user", "application"),
)
SERVER_POOL_CONNECTIONS = _spec(
    "census",
    "server_pool_connections",
    "gauge",
    "Server-side sessions of a known pool (by application_name / client name), by state.",
    ("target", "server", "pool", "state"),
)
SERVER_MAX_CONNECTIONS = _spec(
    "census",
    "server_max_connections",
    "gauge",
    "Sessions the server accepts from ordinary users "
    "(max_connections less reserved slots; Redis maxclients).",
    _CENSUS,
)
SERVER_USED_RATIO = _spec(
    "census",
    "server_connections_used_ratio",
    "gauge",
    "Client sessions divided by server_max_connections.",
    _CENSUS,
)
SERVER_OLDEST = _spec(
    "census",
    "server_oldest_seconds",
    "gauge",
    "Longest time a session has been in its current state, by state.",
    ("target", "server", "state"),
)
SERVER_OLDEST_TRANSACTION = _spec(
    "census",
    "server_oldest_transaction_seconds",
    "gauge",
    "Age of the oldest open transaction (0 when none).",
    _CENSUS,
)
SERVER_IDLE = _spec(
    "census",
    "server_idle_connections",
    "gauge",
    "Sessions idle longer than each configured threshold.",
    ("target", "server", "idle_over"),
)
REAPER_TERMINATED = _spec(
    "reaper",
    "reaper_terminated",
    "counter",
    "Sessions terminated (mode=enforce) or that would have been (mode=dry_run), by reason.",
    ("target", "reason", "mode"),
)
REAPER_ERRORS = _spec(
    "reaper", "reaper_errors", "counter", "Reaper runs that failed, and terminations that raised.", _TARGET
)
REAPER_LEADER = _spec(
    "reaper", "reaper_leader", "gauge", "1 while this replica holds the target's reaper lease.", _TARGET
)
AUDIT_SPOOLED = _spec(
    "audit",
    "audit_spooled_records",
    "gauge",
    "Audit records waiting in the local spool for the audit database.",
)
AUDIT_DROPPED = _spec(
    "audit", "audit_dropped_records", "counter", "Audit records dropped because the spool was full."
)
AUDIT_WRITTEN = _spec("audit", "audit_written", "counter", "Audit records written to the audit database.")

CENSUS_METRICS: Final = (
    SERVER_CONNECTIONS,
    SERVER_POOL_CONNECTIONS,
    SERVER_MAX_CONNECTIONS,
    SERVER_USED_RATIO,
    SERVER_OLDEST,
    SERVER_OLDEST_TRANSACTION,
    SERVER_IDLE,
)

# The families above; with PgBouncer's and target_info (at the end of this module): CATALOGUE.
_CORE: Final[tuple[MetricSpec, ...]] = (
    BUILD_INFO,
    *POOL_METRICS,
    PROBE_UP,
    PROBE_DURATION,
    PROBE_FAILURES,
    PROBE_BACKOFF,
    JOB_DURATION,
    JOB_FAILURES,
    JOB_LAST_SUCCESS,
    JOB_SKIPPED,
    *CENSUS_METRICS,
    REAPER_TERMINATED,
    REAPER_ERRORS,
    REAPER_LEADER,
    AUDIT_SPOOLED,
    AUDIT_DROPPED,
    AUDIT_WRITTEN,
)


@dataclass(frozen=True, slots=True)
class Rows:
    """One family's series as plain rows: the fast-render interface of scrape-time collectors.

    A collector that offers ``rows()`` besides ``collect()`` (a ``RowsSource``) is rendered from its
    rows by poolwatch's /metrics renderer (exposition.py): no ``Sample`` tuples and label dicts to
    build per sample. Each row is ``(label values in spec.labels order, value)``; a histogram's value
    is ``(cumulative (le, count) pairs ending with +Inf, sum)``.
    """

    spec: MetricSpec
    rows: list[tuple[tuple[str, ...], Any]]


class RowsSource(Protocol):
    """The fast-render interface: a scrape-time collector that gives its families as ``Rows``.

    ``rows()`` yields the same series ``collect()`` does. The renderer looks for the method with
    ``getattr`` rather than ``isinstance`` (a runtime protocol check walks every member on every
    call); a class that implements it says so by deriving from this protocol, which mypy checks.
    """

    def rows(self) -> Iterable[Rows]:
        """Every family of the collector, as plain rows."""
        ...


def counter(spec: MetricSpec, registry: CollectorRegistry) -> Counter:
    """The prometheus_client Counter ``spec`` defines, registered on ``registry``."""
    assert spec.type == "counter", spec
    return Counter(spec.name, spec.help, spec.labels, namespace=NAMESPACE, registry=registry)


def gauge(spec: MetricSpec, registry: CollectorRegistry) -> Gauge:
    """The prometheus_client Gauge ``spec`` defines, registered on ``registry``."""
    assert spec.type == "gauge", spec
    return Gauge(spec.name, spec.help, spec.labels, namespace=NAMESPACE, registry=registry)


def histogram(spec: MetricSpec, registry: CollectorRegistry) -> Histogram:
    """The prometheus_client Histogram ``spec`` defines, registered on ``registry``."""
    assert spec.type == "histogram", spec
    assert spec.buckets is not None, spec
    buckets = spec.buckets
    return Histogram(
        spec.name, spec.help, spec.labels, namespace=NAMESPACE, registry=registry, buckets=buckets
    )


class ProbeMetrics:
    """``poolwatch_up``, probe latency and failures, per target."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = gauge(PROBE_UP, registry)
        self.duration = histogram(PROBE_DURATION, registry)
        self.failures = counter(PROBE_FAILURES, registry)
        self.backoff = gauge(PROBE_BACKOFF, registry)

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
        self.duration = histogram(JOB_DURATION, registry)
        self.failures = counter(JOB_FAILURES, registry)
        self.last_success = gauge(JOB_LAST_SUCCESS, registry)
        self.skipped = counter(JOB_SKIPPED, registry)

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
        self.info = gauge(BUILD_INFO, registry)
        # The installed versions, read without importing the libraries (redis alone is a third of a
        # second: `poolwatch check` on SQL targets never needs it); library mode never builds this.
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        def installed(distribution: str) -> str:
            try:
                return version(distribution)
            except PackageNotFoundError:
                return ""

        self.info.labels(
            __version__,
            platform.python_version(),
            installed("sqlalchemy"),
            installed("redis"),
            installed("apscheduler"),
        ).set(1)


class CensusMetrics:
    """Server-side session counts and ages per target, published by census jobs in ``record()``.

    Label sets change from one census to the next (a database empties, an application goes away):
    ``publish`` removes the series the new census no longer has, so a gauge never shows a stale count.
    Each target's series carry its ``server`` label (``set_server``; empty until set).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = gauge(SERVER_CONNECTIONS, registry)
        self.pool_connections = gauge(SERVER_POOL_CONNECTIONS, registry)
        self.max_connections = gauge(SERVER_MAX_CONNECTIONS, registry)
        self.used_ratio = gauge(SERVER_USED_RATIO, registry)
        self.oldest = gauge(SERVER_OLDEST, registry)
        self.oldest_transaction = gauge(SERVER_OLDEST_TRANSACTION, registry)
        self.idle_over = gauge(SERVER_IDLE, registry)
        self.families: dict[str, Gauge] = {
            spec.name: getattr(self, attr)
            for spec, attr in zip(
                CENSUS_METRICS,
                (
                    "connections",
                    "pool_connections",
                    "max_connections",
                    "used_ratio",
                    "oldest",
                    "oldest_transaction",
                    "idle_over",
                ),
                strict=True,
            )
        }
        self._shown: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
        self._servers: dict[str, str] = {}

    def set_server(self, target: str, server: str) -> None:
        """The ``server`` label of ``target``'s series from its next census on."""
        self._servers[target] = server

    def publish(self, target: str, samples: Iterable[tuple[str, tuple[str, ...], float]]) -> None:
        """Set ``target``'s series to ``samples`` (family name, labels after target and server,
        value) and drop the series of ``target`` that are not among them."""
        server = self._servers.get(target, "")
        shown: set[tuple[str, tuple[str, ...]]] = set()
        for name, labels, value in samples:
            self.families[name].labels(target, server, *labels).set(value)
            shown.add((name, (server, *labels)))
        for name, labels in self._shown.get(target, set()) - shown:
            _remove(self.families[name], [(target, *labels)])
        self._shown[target] = shown

    def remove_target(self, target: str) -> None:
        self.publish(target, ())
        self._shown.pop(target, None)
        self._servers.pop(target, None)


class ReaperMetrics:
    """Reaper decisions, errors and leadership per target; the audit spool (process-wide)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.terminated = counter(REAPER_TERMINATED, registry)
        self.errors = counter(REAPER_ERRORS, registry)
        self.leader = gauge(REAPER_LEADER, registry)
        self.spooled = gauge(AUDIT_SPOOLED, registry)
        self.dropped = counter(AUDIT_DROPPED, registry)
        self.written = counter(AUDIT_WRITTEN, registry)

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
    "pgbouncer_clients": (
        "gauge",
        (
            "Client connections to PgBouncer by database, user, application_name (census.applications; "
            "others folded into the empty value) and state (SHOW CLIENTS)."
        ),
        ("database", "user", "application", "state"),
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


PGBOUNCER_METRICS: Final = tuple(
    _spec("pgbouncer", name, kind, documentation, ("target", *labels))  # type: ignore[arg-type]
    for name, (kind, documentation, labels) in PGBOUNCER_FAMILIES.items()
)


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
        families: dict[str, Any] = {spec.name: spec.scrape_family() for spec in PGBOUNCER_METRICS}
        for target, rows in sorted(current.items()):
            for name, labels, value in rows:
                families[name].add_metric([target, *labels], value)
        yield from families.values()


class TargetMetrics:
    """``poolwatch_target_info{target,kind}``: 1 per configured target, so dashboards and alerts can
    select the targets of one kind (the MySQL and PgBouncer rows)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._kinds: dict[str, str] = {}
        self.info = gauge(TARGET_INFO, registry)

    def add_target(self, target: str, kind: str) -> None:
        self.remove_target(target)
        self._kinds[target] = kind
        self.info.labels(target, kind).set(1)

    def remove_target(self, target: str) -> None:
        kind = self._kinds.pop(target, None)
        if kind is not None:
            _remove(self.info, [(target, kind)])


TARGET_INFO: Final = _spec(
    "target", "target_info", "gauge", "1 per configured target, labelled with its kind.", ("target", "kind")
)

# Every family poolwatch exports, once each.
CATALOGUE: Final[tuple[MetricSpec, ...]] = (*_CORE, *PGBOUNCER_METRICS, TARGET_INFO)
