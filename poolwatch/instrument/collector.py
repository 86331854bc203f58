"""The scrape-time collector of every instrumented pool on one registry.

One collector per registry holds the pools registered on it by name (two collectors exporting the
same family names would clash). Each scrape builds fresh metric families, like prometheus_client's
``ProcessCollector``: gauges from the pool's own accessors, counters and histograms from the pool's
``Recorder``. Nothing here does I/O, so a scrape stays cheap even when a database is down.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import prometheus_client.registry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from poolwatch.exposition import Rows
from poolwatch.instrument.recorder import CLOSE_REASONS, CONNECT_ERROR_REASONS
from poolwatch.metrics import NAMESPACE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

    from poolwatch.instrument.recorder import Recorder, Snapshot


@dataclass(frozen=True, slots=True)
class PoolState:
    """Sizes read from a pool at scrape time. ``max_connections`` is +Inf for an unbounded pool."""

    idle: int
    used: int
    size: int
    max_connections: float
    overflow: int


class PoolSource(Protocol):
    """What the collector needs from an instrumented pool of either library."""

    recorder: Recorder

    def state(self) -> PoolState | None:
        """The pool's sizes now, or None when the pool is gone (its series are then dropped)."""


class PoolCollector(Collector):
    """Exports every pool registered on one registry."""

    def __init__(self) -> None:
        self._pools: dict[str, PoolSource] = {}
        self._lock = threading.Lock()

    def add(self, name: str, source: PoolSource) -> None:
        with self._lock:
            if name in self._pools:
                raise ValueError(
                    f"a pool named {name!r} is already instrumented on this registry; "
                    "give each pool its own name"
                )
            self._pools[name] = source

    def remove(self, name: str, source: PoolSource) -> None:
        with self._lock:
            if self._pools.get(name) is source:
                del self._pools[name]

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry can check for clashes without calling collect().
        yield from _Families().all()

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for name, state, snapshot in self._read():
            families.add(name, state, snapshot)
        yield from families.all()

    def _read(self) -> list[tuple[str, PoolState | None, Snapshot]]:
        with self._lock:
            pools = list(self._pools.items())
        read = []
        for name, source in pools:
            try:
                state = source.state()
            except Exception as exc:
                source.recorder.internal_error(exc)
                state = None
            read.append((name, state, source.recorder.snapshot()))
        return read

    def rows(self) -> Iterator[Rows]:
        """The series of ``collect()`` as plain rows, for poolwatch's /metrics renderer.

        Building metric families cost ~5 us per sample, most of a 100-target scrape; these rows
        cost a fifth of that. tests/unit/test_exposition.py checks that both say the same.
        """
        spec = _Families()
        pools = self._read()
        live = [(name, state) for name, state, _ in pools if state is not None]
        one = ("pool",)

        def per_pool(family: Metric, value: Callable[[Snapshot], object]) -> Rows:
            return Rows(family, one, [((name,), value(snap)) for name, _, snap in pools])

        def per_reason(
            family: Metric, reasons: tuple[str, ...], counts: Callable[[Snapshot], dict[str, int]]
        ) -> Rows:
            return Rows(
                family,
                ("pool", "reason"),
                [
                    ((name, reason), counts(snap).get(reason, 0))
                    for name, _, snap in pools
                    for reason in reasons
                ],
            )

        yield Rows(
            spec.connections,
            ("pool", "state"),
            [row for name, st in live for row in (((name, "idle"), st.idle), ((name, "used"), st.used))],
        )
        yield Rows(spec.max_connections, one, [((name,), st.max_connections) for name, st in live])
        yield Rows(spec.size, one, [((name,), st.size) for name, st in live])
        yield per_pool(spec.min_idle, lambda snap: snap.min_idle)
        yield Rows(spec.overflow, one, [((name,), max(0, st.overflow)) for name, st in live])
        yield per_pool(spec.pending, lambda snap: snap.pending)
        yield per_pool(spec.waits, lambda snap: snap.waits)
        yield per_pool(spec.uses, lambda snap: snap.uses)
        yield per_pool(spec.creates, lambda snap: snap.creates)
        yield per_pool(spec.checkouts, lambda snap: snap.checkouts)
        yield per_pool(spec.timeouts, lambda snap: snap.timeouts)
        yield per_reason(spec.connect_errors, CONNECT_ERROR_REASONS, lambda snap: snap.connect_errors)
        yield per_reason(spec.closed, CLOSE_REASONS, lambda snap: snap.closed)
        yield per_pool(spec.leaked, lambda snap: snap.leaked)
        yield per_pool(spec.leaks, lambda snap: snap.leaks_total)
        yield per_pool(spec.errors, lambda snap: snap.internal_errors)


class _Families:
    def __init__(self) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("pool",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, labels=list(labels))

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("pool",)) -> CounterMetricFamily:
            return CounterMetricFamily(f"{NAMESPACE}_{name}", doc, labels=list(labels))

        def histogram(name: str, doc: str) -> HistogramMetricFamily:
            return HistogramMetricFamily(f"{NAMESPACE}_{name}", doc, labels=["pool"])

        self.connections = gauge("pool_connections", "Open pooled connections by state.", ("pool", "state"))
        self.max_connections = gauge("pool_max_connections", "Most connections the pool may open.")
        self.size = gauge("pool_size", "Persistent size of the pool (connections kept when idle).")
        self.min_idle = gauge("pool_min_idle", "Idle connections housekeeping keeps open.")
        self.overflow = gauge("pool_overflow", "Overflow connections open beyond the pool size.")
        self.pending = gauge("pool_pending_requests", "Callers waiting for a connection now.")
        self.waits = histogram(
            "pool_wait_seconds",
            "Checkout latency: request to connection handed out (queueing, connecting, pre-ping).",
        )
        self.uses = histogram("pool_use_seconds", "How long connections were held by callers.")
        self.creates = histogram("pool_create_seconds", "Time to open a new connection.")
        self.checkouts = counter("pool_checkouts", "Successful checkouts.")
        self.timeouts = counter("pool_timeouts", "Checkouts that timed out waiting (pool exhausted).")
        self.connect_errors = counter(
            "pool_connect_errors", "Failed attempts to open a connection, by reason.", ("pool", "reason")
        )
        self.closed = counter("pool_closed", "Connections closed, by reason.", ("pool", "reason"))
        self.leaked = gauge("pool_leaked_connections", "Connections held longer than leak_threshold now.")
        self.leaks = counter("pool_leaks", "Connections ever held longer than leak_threshold.")
        self.errors = counter(
            "instrumentation_errors", "Failures of poolwatch's own pool hooks (never raised to the host)."
        )

    def add(self, pool: str, state: PoolState | None, snap: Snapshot) -> None:
        if state is not None:
            self.connections.add_metric([pool, "idle"], state.idle)
            self.connections.add_metric([pool, "used"], state.used)
            self.max_connections.add_metric([pool], state.max_connections)
            self.size.add_metric([pool], state.size)
            self.overflow.add_metric([pool], max(0, state.overflow))
        self.min_idle.add_metric([pool], snap.min_idle)
        self.pending.add_metric([pool], snap.pending)
        for family, (buckets, total) in (
            (self.waits, snap.waits),
            (self.uses, snap.uses),
            (self.creates, snap.creates),
        ):
            family.add_metric([pool], buckets, total)
        self.checkouts.add_metric([pool], snap.checkouts)
        self.timeouts.add_metric([pool], snap.timeouts)
        for reason in CONNECT_ERROR_REASONS:
            self.connect_errors.add_metric([pool, reason], snap.connect_errors.get(reason, 0))
        for reason in CLOSE_REASONS:
            self.closed.add_metric([pool, reason], snap.closed.get(reason, 0))
        self.leaked.add_metric([pool], snap.leaked)
        self.leaks.add_metric([pool], snap.leaks_total)
        self.errors.add_metric([pool], snap.internal_errors)

    def all(self) -> Iterator[Metric]:
        yield from vars(self).values()


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def collector_for(registry: CollectorRegistry | None) -> PoolCollector:
    """The pool collector of ``registry`` (prometheus_client's default REGISTRY when None, looked up
    now, not at import), registered on first use."""
    target = prometheus_client.registry.REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = PoolCollector()
            target.register(collector)
            _collectors[target] = collector
        return collector
