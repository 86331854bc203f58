"""The scrape-time collector of every instrumented pool on one registry.

One collector per registry holds the pools registered on it by name (two collectors exporting the
same family names would clash). Each scrape builds fresh metric families, like prometheus_client's
``ProcessCollector``: gauges from the pool's own accessors, counters and histograms from the pool's
``Recorder``. Nothing here does I/O, so a scrape stays cheap even when a database is down.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import prometheus_client.registry
from prometheus_client.registry import Collector, CollectorRegistry

from poolwatch.instrument.recorder import CLOSE_REASONS, CONNECT_ERROR_REASONS
from poolwatch.metrics import POOL_METRICS, Rows, RowsSource

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

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
    server: str  # the ``server`` label: ``host:port/database``, credential-free (serverlabel.py)

    def state(self) -> PoolState | None:
        """The pool's sizes now, or None when the pool is gone (its series are then dropped)."""


class PoolCollector(Collector, RowsSource):
    """Exports every pool registered on one registry: ``collect()`` for prometheus_client, ``rows()``
    for poolwatch's renderer."""

    def __init__(self) -> None:
        self._pools: dict[str, PoolSource] = {}
        # Reentrant: a garbage-collector finalizer that removes a dropped pool (weakref.finalize(pool,
        # handle.remove)) can run on a scraping thread while it holds this lock.
        self._lock = threading.RLock()

    def add(self, name: str, source: PoolSource) -> None:
        with self._lock:
            if name in self._pools:
                raise ValueError(
                    f"a pool named {name!r} is already instrumented on this registry; "
                    "give each pool its own name"
                )
            self._pools[name] = source
        for listener in tuple(_listeners):
            listener(self, name, source)

    def remove(self, name: str, source: PoolSource) -> None:
        with self._lock:
            if self._pools.get(name) is source:
                del self._pools[name]

    def after_fork_in_child(self) -> None:
        """Renew the locks this collector and its pools' recorders share with threads the forked
        child does not have (one may have held a lock at the fork: the child would wait forever)."""
        self._lock = threading.RLock()
        for source in list(self._pools.values()):
            source.recorder.after_fork_in_child()

    def sources(self) -> list[tuple[str, PoolSource]]:
        """The pools registered now, by name."""
        with self._lock:
            return list(self._pools.copy().items())

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry can check for clashes without calling collect().
        for spec in POOL_METRICS:
            yield spec.scrape_family()

    def collect(self) -> Iterator[Metric]:
        for rows in self.rows():
            family: Any = rows.spec.scrape_family()  # add_metric() differs by family type
            for labels, value in rows.rows:
                if rows.spec.type == "histogram":
                    buckets, total = value
                    family.add_metric(list(labels), buckets, total)
                else:
                    family.add_metric(list(labels), value)
            yield family

    def rows(self) -> Iterator[Rows]:
        """Every pool family's series as plain rows: what ``collect()`` exports, and what poolwatch's
        /metrics renderer takes directly (metric families cost ~5 us per sample, rows a fifth)."""
        pools = self._read()
        for spec in POOL_METRICS:
            series = _SERIES[spec.name]
            yield Rows(spec, [row for key, state, snap in pools for row in series(key, state, snap)])

    def _read(self) -> list[tuple[Key, PoolState | None, Snapshot]]:
        with self._lock:
            pools = list(self._pools.copy().items())  # a finalizer may remove one meanwhile
        read = []
        for name, source in pools:
            try:
                state = source.state()
            except Exception as exc:
                source.recorder.internal_error(exc)
                state = None
            read.append(((name, source.server), state, source.recorder.snapshot()))
        return read


# The labels every pool series starts with: (pool, server).
Key = tuple[str, str]
# How each pool family reads one pool: (its key labels, its sizes or None once it is gone, its
# snapshot) -> rows. Size gauges come from the pool itself and disappear with it; the rest from the
# recorder.
Series = Callable[[Key, "PoolState | None", "Snapshot"], list[tuple[tuple[str, ...], object]]]


def _sized(value: Callable[[PoolState], object]) -> Series:
    return lambda key, state, _snap: [] if state is None else [(key, value(state))]


def _recorded(value: Callable[[Snapshot], object]) -> Series:
    return lambda key, _state, snap: [(key, value(snap))]


def _by_reason(reasons: tuple[str, ...], counts: Callable[[Snapshot], dict[str, int]]) -> Series:
    return lambda key, _state, snap: [((*key, reason), counts(snap).get(reason, 0)) for reason in reasons]


def _connections(key: Key, state: PoolState | None, _snap: Snapshot) -> list[tuple[tuple[str, ...], object]]:
    return [] if state is None else [((*key, "idle"), state.idle), ((*key, "used"), state.used)]


def _uses(key: Key, _state: PoolState | None, snap: Snapshot) -> list[tuple[tuple[str, ...], object]]:
    """Use time without a holder (``holder=""``, the same series as no label to Prometheus), then by
    holder."""
    return [((*key, ""), snap.uses), *(((*key, label), uses) for label, uses in snap.holder_uses)]


def _by_holder(total: Callable[[Snapshot], int], by: Callable[[Snapshot], dict[str, int]]) -> Series:
    """A leak count without a holder (the total less the holders' counts), then by holder."""

    def series(key: Key, _state: PoolState | None, snap: Snapshot) -> list[tuple[tuple[str, ...], object]]:
        counts = by(snap)
        rows: list[tuple[tuple[str, ...], object]] = [((*key, ""), total(snap) - sum(counts.values()))]
        rows.extend(((*key, label), count) for label, count in counts.items())
        return rows

    return series


_SERIES: Final[dict[str, Series]] = {
    "pool_connections": _connections,
    "pool_max_connections": _sized(lambda state: state.max_connections),
    "pool_size": _sized(lambda state: state.size),
    "pool_min_idle": _recorded(lambda snap: snap.min_idle),
    "pool_overflow": _sized(lambda state: max(0, state.overflow)),
    "pool_pending_requests": _recorded(lambda snap: snap.pending),
    "pool_wait_seconds": _recorded(lambda snap: snap.waits),
    "pool_use_seconds": _uses,
    "pool_create_seconds": _recorded(lambda snap: snap.creates),
    "pool_checkouts": _recorded(lambda snap: snap.checkouts),
    "pool_timeouts": _recorded(lambda snap: snap.timeouts),
    "pool_connect_errors": _by_reason(CONNECT_ERROR_REASONS, lambda snap: snap.connect_errors),
    "pool_closed": _by_reason(CLOSE_REASONS, lambda snap: snap.closed),
    "pool_leaked_connections": _by_holder(lambda snap: snap.leaked, lambda snap: snap.leaked_by_holder),
    "pool_leaks": _by_holder(lambda snap: snap.leaks_total, lambda snap: snap.leaks_by_holder),
    "instrumentation_errors": _recorded(lambda snap: snap.internal_errors),
    "pool_inherited_checkouts": _recorded(lambda snap: snap.inherited_checkouts),
}


# Told of every pool added to any registry's collector, with that collector: how OpenTelemetry
# publishing (poolwatch.otel) takes in pools instrumented after it was installed. Must not raise.
Listener = Callable[["PoolCollector", str, PoolSource], None]
_listeners: list[Listener] = []


def listen(listener: Listener) -> Callable[[], None]:
    """Call ``listener`` for each pool added from now on; returns what stops it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def collectors() -> list[PoolCollector]:
    """The pool collector of every registry that has one (the multiprocess writer writes them all,
    poolwatch.otel publishes them)."""
    with _collectors_lock:
        return list(_collectors.values())


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
    if os.environ.get(MULTIPROC_DIR) or os.environ.get(MULTIPROC_DIR.lower()):
        # Multi-process export (and its slot files) load only in a process that has it on.
        from poolwatch.instrument import multiprocess  # noqa: PLC0415

        multiprocess.arm(collectors)
    return collector


# prometheus_client's multiprocess variable (multiprocess.py reads it, with its own two settings).
MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
_MULTIPROCESS: Final = "poolwatch.instrument.multiprocess"
# The multiprocess module as this thread's fork found it (None: not loaded). Looked up once per fork,
# so the handlers after it release what the first took even if the module loads meanwhile.
_forking = threading.local()


def _before_fork() -> None:
    # In the order a flush takes them: the flusher's lock, then this one.
    multiprocess = _forking.module = sys.modules.get(_MULTIPROCESS)
    if multiprocess is not None:
        multiprocess.before_fork()
    _collectors_lock.acquire()


def _forked() -> ModuleType | None:
    return getattr(_forking, "module", None)


def _after_fork_in_parent() -> None:
    if (multiprocess := _forked()) is not None:
        multiprocess.after_fork_in_parent()
    _collectors_lock.release()


def _after_fork_in_child() -> None:
    # Locks first: the child's flusher reads the pools through them.
    global _collectors_lock  # noqa: PLW0603 - renewed in the child: its holder may be gone
    _collectors_lock = threading.Lock()
    for collector in list(_collectors.values()):
        collector.after_fork_in_child()
    if (multiprocess := _forked()) is not None:
        multiprocess.after_fork_in_child()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
