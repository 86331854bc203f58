"""Every pool poolwatch instruments, published through OpenTelemetry: ``install(meter_provider)``.

``install()`` creates the semantic conventions' ``db.client.connection.*`` instruments, and
``poolwatch.*`` ones for what the conventions lack (the names, instruments and units are in
otelnames.py), on a meter of the given provider (the global one by default). Every pool instrumented
by poolwatch, before or after the call, is published with ``db.client.connection.pool.name`` set to
its name; the Prometheus export goes on beside it.

Nothing runs on the checkout path. The observable instruments read each pool when the SDK collects,
as a Prometheus scrape does (its accessors and its recorder's snapshot, ``instrument/collector.py``):
the first instrument's callback takes one reading of every pool, the others report from it (the SDK
runs a collection's callbacks one after the other, in the order the instruments were created). The
three histograms get the very samples the recorder folds into the Prometheus buckets: each fold (a
scrape or a collection, whichever comes first) passes them to a sink, a bounded deque here, and the
next collection records them into the SDK histograms on the collecting thread. Recording is one
SDK ``Histogram.record()`` a sample (about 47,000 instructions, opentelemetry-sdk 1.45), so a
collection costs about that times three times the checkouts since the last one (at most
``SAMPLE_LIMIT`` per histogram and pool; beyond that the newest are kept, with one warning a pool).
Histograms count the samples folded after ``install()``; counters count from the pool's start, like
Prometheus'.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import Observation
except ModuleNotFoundError as exc:  # one line naming the install, like the other optional parts
    raise ModuleNotFoundError(
        f"poolwatch.otel needs {exc.name}, which is not installed: pip install 'poolwatch[otel]'",
        name=exc.name,
    ) from exc

from poolwatch._version import __version__
from poolwatch.instrument import collector as pool_collectors
from poolwatch.instrument.collector import _SERIES, collector_for
from poolwatch.instrument.recorder import SAMPLE_LIMIT
from poolwatch.metrics import LATENCY_BUCKETS, POOL_METRICS
from poolwatch.otelnames import HOLDER, POOL_NAME, POOL_NAMES, SCHEMA_URL, SERVER

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider
    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.collector import PoolCollector, PoolSource, PoolState
    from poolwatch.instrument.recorder import Recorder, Samples, Snapshot

log = logging.getLogger("poolwatch.otel")

# The family whose callback takes the reading the others report from: the first created.
_FIRST: Final = POOL_METRICS[0].name
# Each histogram family and the recorder's (and backlog's) samples it is fed from.
_HISTOGRAMS: Final = {
    "pool_wait_seconds": "waits",
    "pool_use_seconds": "uses",
    "pool_create_seconds": "creates",
}


def _pending() -> deque[float]:
    return deque(maxlen=SAMPLE_LIMIT)


@dataclass(slots=True)
class _Backlog:
    """One pool's folded samples waiting for the next collection, per histogram. Its ``take_*``
    methods are the recorder's sinks: they run where the recorder folds (a scrape or a collection),
    never on the checkout path."""

    name: str
    server: str
    waits: deque[float] = field(default_factory=_pending)
    uses: deque[float] = field(default_factory=_pending)
    creates: deque[float] = field(default_factory=_pending)
    # Use times of connections with a holder, with its bounded label.
    held: deque[tuple[str, float]] = field(default_factory=lambda: deque(maxlen=SAMPLE_LIMIT))
    overflowed: bool = False

    def take_waits(self, seconds: list[float]) -> None:
        self._take(self.waits, seconds)

    def take_uses(self, seconds: list[float]) -> None:
        self._take(self.uses, seconds)

    def take_creates(self, seconds: list[float]) -> None:
        self._take(self.creates, seconds)

    def hold(self, label: str, seconds: list[float]) -> None:
        self._take(self.held, [(label, held) for held in seconds])

    def _take(self, pending: deque[Any], batch: list[Any]) -> None:
        if not self.overflowed and len(pending) + len(batch) > SAMPLE_LIMIT:
            self.overflowed = True  # one warning a pool, as the recorder gives for its own samples
            log.warning(
                "pool %s: more than %d samples of one histogram between two OpenTelemetry "
                "collections: the OpenTelemetry histograms keep the newest; counters stay exact "
                "(collect more often)",
                self.name,
                SAMPLE_LIMIT,
            )
        pending.extend(batch)


@dataclass(frozen=True, slots=True)
class _Reading:
    name: str
    server: str
    state: PoolState | None
    snapshot: Snapshot


# Sinks are added to and removed from a recorder's samples by replacing the tuple: one lock for all
# publishers, so two installing at once do not lose each other's.
_sinks_lock = threading.Lock()


class PoolPublisher:
    """The OpenTelemetry instruments of every pool in scope (one registry's, or every registry's)."""

    def __init__(self, meter: Meter, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry
        self._collector = None if registry is None else collector_for(registry)
        self._lock = threading.Lock()
        # By id() of the recorder (a dataclass: not hashable), while it lives.
        self._backlogs: dict[int, tuple[weakref.ref[Recorder], _Backlog]] = {}
        self._orphans: list[_Backlog] = []  # of recorders that are gone, still to be recorded
        self._readings: list[_Reading] = []
        self._duplicates: set[str] = set()
        self.closed = False
        self._histograms: dict[str, Histogram] = {}
        for spec in POOL_METRICS:
            otel = POOL_NAMES[spec.name]
            if otel.instrument == "Histogram":
                self._histograms[_HISTOGRAMS[spec.name]] = meter.create_histogram(
                    otel.name,
                    unit=otel.unit,
                    description=spec.help,
                    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
                )
                continue
            create = {
                "Counter": meter.create_observable_counter,
                "UpDownCounter": meter.create_observable_up_down_counter,
                "Gauge": meter.create_observable_gauge,
            }[otel.instrument]
            callback = functools.partial(self._observe, spec.name)
            create(otel.name, callbacks=[callback], unit=otel.unit, description=spec.help)
        self._stop_listening = pool_collectors.listen(self._added)
        for collector in self._collectors():
            for _name, source in collector.sources():
                self._attach(source)

    def close(self) -> None:
        """Stop publishing: the instruments report nothing more, the recorders lose their sinks.
        Safe to call twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            attached = [(ref(), backlog) for ref, backlog in self._backlogs.values()]
            self._backlogs.clear()
            self._readings = []
        self._stop_listening()
        for recorder, backlog in attached:
            if recorder is None:
                continue
            with _sinks_lock:
                for samples, take in _pairs(recorder, backlog):
                    samples.sinks = tuple(sink for sink in samples.sinks if sink != take)
                by_holder = recorder.by_holder
                by_holder.sinks = tuple(sink for sink in by_holder.sinks if sink != backlog.hold)

    # -- pools coming and going ----------------------------------------------------------------------

    def _collectors(self) -> list[PoolCollector]:
        return pool_collectors.collectors() if self._collector is None else [self._collector]

    def _added(self, collector: PoolCollector, _name: str, source: PoolSource) -> None:
        if self._collector is None or collector is self._collector:
            self._attach(source)

    def _attach(self, source: PoolSource) -> None:
        recorder = source.recorder
        key = id(recorder)
        with self._lock:
            if self.closed or self._backlog(recorder) is not None:
                return
            backlog = _Backlog(recorder.name, source.server)
            self._backlogs[key] = (weakref.ref(recorder, lambda _ref: self._gone(key)), backlog)
        with _sinks_lock:
            for samples, take in _pairs(recorder, backlog):
                samples.sinks = (*samples.sinks, take)
            recorder.by_holder.sinks = (*recorder.by_holder.sinks, backlog.hold)

    def _gone(self, key: int) -> None:
        # A weakref callback, run by the garbage collector on whichever thread allocates: no lock
        # (that thread may hold one), single dict and list operations only (atomic under the GIL).
        entry = self._backlogs.pop(key, None)
        if entry is not None:
            self._orphans.append(entry[1])  # its last samples go out at the next collection

    def _backlog(self, recorder: Recorder) -> _Backlog | None:
        entry = self._backlogs.get(id(recorder))
        return entry[1] if entry is not None and entry[0]() is recorder else None

    # -- collection (the SDK's collecting thread) ----------------------------------------------------

    def _observe(self, family: str, _options: CallbackOptions) -> Iterator[Observation]:
        if family == _FIRST:
            self._refresh()
        otel = POOL_NAMES[family]
        series = _SERIES[family]
        for reading in self._readings:
            for labels, value in series((reading.name, reading.server), reading.state, reading.snapshot):
                assert isinstance(value, int | float)
                if math.isfinite(value):  # an unbounded pool has no db.client.connection.max
                    # Every observed pool quantity is a count: an integer point, whichever type
                    # the pool reports it in (a limit is a float, for an unbounded one's +Inf).
                    yield Observation(int(value), _attributes(otel.attributes, labels))

    def _refresh(self) -> None:
        """Read every pool in scope once (sizes now, a snapshot of its recorder), and record the
        samples folded since the last collection into the histograms."""
        readings: list[_Reading] = []
        seen: set[str] = set()
        for collector in self._collectors():
            for name, source in collector.sources():
                if name in seen:
                    self._duplicate(name)
                    continue
                seen.add(name)
                recorder = source.recorder
                self._attach(source)
                try:
                    state = source.state()
                except Exception as exc:
                    recorder.internal_error(exc)
                    state = None
                snapshot = recorder.snapshot()  # folds into the backlog
                readings.append(_Reading(name, source.server, state, snapshot))
        # Every backlog, also of a pool no longer listed or gone: one replaced under the same name (a
        # target rebuilt on reload) hands its last samples on when its successor carries its counts.
        with self._lock:
            backlogs = [backlog for _ref, backlog in self._backlogs.values()]
        while self._orphans:
            backlogs.append(self._orphans.pop())
        for backlog in backlogs:
            self._record(backlog)
        if not self.closed:
            self._readings = readings

    def _record(self, backlog: _Backlog) -> None:
        attributes = _attributes((POOL_NAME, SERVER), (backlog.name, backlog.server))
        for kind, histogram in self._histograms.items():
            pending: deque[float] = getattr(backlog, kind)
            popleft, record = pending.popleft, histogram.record
            # A full deque drops its oldest as a fold extends it, so it may run dry before `count`.
            with contextlib.suppress(IndexError):
                for _ in range(len(pending)):
                    record(popleft(), attributes)
        use = self._histograms["uses"].record
        by_label: dict[str, dict[str, str]] = {}
        with contextlib.suppress(IndexError):
            for _ in range(len(backlog.held)):
                label, seconds = backlog.held.popleft()
                held_by = by_label.get(label)
                if held_by is None:
                    held_by = by_label[label] = {**attributes, HOLDER: label}
                use(seconds, held_by)

    def _duplicate(self, name: str) -> None:
        if name not in self._duplicates:
            self._duplicates.add(name)
            log.warning(
                "two pools named %s on different registries: OpenTelemetry publishes the first only "
                "(db.client.connection.pool.name must be unique in a process)",
                name,
            )


def _attributes(names: tuple[str, ...], values: tuple[str, ...]) -> dict[str, str]:
    """Attributes by name; an empty value is left out (no holder, as on /metrics)."""
    return {name: value for name, value in zip(names, values, strict=True) if value != ""}


def _pairs(recorder: Recorder, backlog: _Backlog) -> list[tuple[Samples, Callable[[list[float]], None]]]:
    """Each histogram's samples of ``recorder`` and the method of ``backlog`` that takes them."""
    return [(getattr(recorder, kind), getattr(backlog, f"take_{kind}")) for kind in _HISTOGRAMS.values()]


_installed: weakref.WeakKeyDictionary[MeterProvider, PoolPublisher] = weakref.WeakKeyDictionary()
_installed_lock = threading.Lock()


def install(
    meter_provider: MeterProvider | None = None, *, registry: CollectorRegistry | None = None
) -> PoolPublisher:
    """Publish every pool instrumented by poolwatch through OpenTelemetry, on ``meter_provider``
    (the global provider when None, looked up now). ``registry``: only the pools instrumented on
    that prometheus_client registry; every registry's when None. Installing again on the same
    provider returns the publisher already there; ``close()`` it to stop."""
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _installed_lock:
        publisher = _installed.get(provider)
        if publisher is not None and not publisher.closed:
            if publisher.registry is not registry:
                raise ValueError(
                    "poolwatch.otel.install: already installed on this meter provider for other pools"
                )
            return publisher
        meter = provider.get_meter("poolwatch", __version__, schema_url=SCHEMA_URL)
        publisher = _installed[provider] = PoolPublisher(meter, registry)
        return publisher
