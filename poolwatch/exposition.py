"""The /metrics body: Prometheus text format 0.0.4, rendered in a fraction of prometheus_client's time.

Why this exists: ``prometheus_client.generate_latest`` builds two ``Sample`` tuples and a label dict
per sample, formats every histogram bound on every scrape and, for OpenMetrics, escapes names one
character at a time. At 100 targets (thousands of samples) that was ~14 us per sample, far from the
20 ms scrape budget. Here the text before each value (name and labels, escaped) is built once per
series and cached; values are read from the metric objects and formatted with ``repr``.

A histogram series' text (its buckets, count and sum) is kept with the values it was written from and
reused while they stay the same: most histograms of a quiet target do not change between two
scrapes, and formatting their buckets was most of a scrape's time at 100 targets.

Counters, gauges and histograms of prometheus_client (in-process mode) take the fast path, which
reads their children and values through private attributes: that coupling lives in
``_fast_series`` only, pinned by a test that compares the output with ``generate_latest`` on the
supported versions, and any collector it does not recognise (custom scrape-time collectors,
summaries, info and enum metrics, ``set_function`` gauges, multiprocess values) goes through the
public ``collect()``.
``_created`` series are not exported: text format 0.0.4 has no use for them and they doubled the
counter and histogram series.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    from poolwatch.metrics import Rows

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Text format 0.0.4 knows five types; the OpenMetrics ones are written as prometheus_client writes
# them there: an info is a gauge named ``<name>_info``, a state set a gauge, a gauge histogram a
# histogram (with its ``_gsum`` and ``_gcount`` as gauges of their own), anything else untyped.
_TYPES: Final = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
}
_SUFFIXES: Final = {"counter": "_total", "info": "_info"}
_NO_CREATED: Final = ("counter", "histogram", "summary", "gaugehistogram")
_GAUGE_HISTOGRAM_GAUGES: Final = ("_gcount", "_gsum")

Cache = dict[tuple[Any, ...], tuple[str, ...]]
# A histogram series' text, and the values it was written from (compared, never read back).
Blocks = dict[tuple[Any, ...], tuple[object, str]]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: ``+Inf``, ``NaN``, Go's exponent style past 1e6."""
    if -1e6 < value < 1e6:  # noqa: PLR2004 - where Go and Python write floats alike
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # noqa: PLR2004 - Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def series_prefix(name: str, labels: Iterable[tuple[str, str]]) -> str:
    """``name{a="x",b="y"} ``: everything before the value."""
    pairs = ",".join(f'{key}="{escape_value(value)}"' for key, value in labels)
    return f"{name}{{{pairs}}} " if pairs else f"{name} "


class Renderer:
    """Renders one registry; keeps the per-series text between scrapes. Thread-safe."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._prefixes: Cache = {}
        self._blocks: Blocks = {}
        self._fresh_blocks: Blocks = {}
        self._headers: dict[tuple[str, str, str], str] = {}

    def render(self) -> bytes:
        with self._lock:
            fresh: Cache = {}
            self._fresh_blocks = {}
            out: list[str] = []
            for collector in _collectors(self._registry):
                rows = getattr(collector, "rows", None)
                if callable(rows):
                    self._rows(rows(), out, fresh)
                elif not _fast_series(collector, out, self._prefixes, fresh, self._header, self._block):
                    self._collected(collector.collect(), out, fresh)
            # Only series seen in this scrape stay cached: removed targets don't leak.
            self._prefixes = fresh
            self._blocks, self._fresh_blocks = self._fresh_blocks, {}
            return "".join(out).encode()

    def _header(self, name: str, kind: str, documentation: str) -> str:
        key = (name, kind, documentation)
        header = self._headers.get(key)
        if header is None:
            doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
            header = f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(kind, 'untyped')}\n"
            self._headers[key] = header
        return header

    def _block(
        self,
        key: tuple[Any, ...],
        values: object,
        prefixes: tuple[str, ...],
        counts: Callable[[], tuple[float, ...]],
    ) -> str:
        """A histogram series' text: the last scrape's if ``values`` are the same; otherwise
        written from ``counts()`` (cumulative bucket counts, then the sum)."""
        block = self._blocks.get(key)
        if block is None or block[0] != values:
            block = (values, _histogram_text(prefixes, counts()))
        self._fresh_blocks[key] = block
        return block[1]

    def _rows(self, families: Iterable[Rows], out: list[str], fresh: Cache) -> None:
        cache = self._prefixes
        for rows in families:
            spec = rows.spec
            name, kind, labelnames = spec.full_name, spec.type, spec.labels
            series = name + "_total" if kind == "counter" else name
            out.append(self._header(series, kind, spec.help))
            for labelvalues, value in rows.rows:
                key = ("rows", name, *labelvalues)
                prefixes = cache.get(key)
                if kind == "histogram":
                    pairs, total = value
                    if prefixes is None or len(prefixes) != len(pairs) + 2:
                        prefixes = _histogram_prefixes(name, labelnames, labelvalues, [le for le, _ in pairs])
                    fresh[key] = prefixes
                    out.append(self._block(key, value, prefixes, functools.partial(_flat, pairs, total)))
                else:
                    if prefixes is None:
                        prefixes = (series_prefix(series, zip(labelnames, labelvalues, strict=True)),)
                    fresh[key] = prefixes
                    out.append(f"{prefixes[0]}{format_value(value)}\n")

    def _collected(self, families: Iterable[Any], out: list[str], fresh: Cache) -> None:
        """The general path: any collector's ``collect()`` output (public API)."""
        for family in families:
            kind = family.type
            out.append(self._header(family.name + _SUFFIXES.get(kind, ""), kind, family.documentation))
            created = family.name + "_created" if kind in _NO_CREATED else None
            aside: dict[str, list[Any]] = {}
            if kind == "gaugehistogram":
                aside = {family.name + suffix: [] for suffix in _GAUGE_HISTOGRAM_GAUGES}
            for sample in family.samples:
                if sample.name == created:
                    continue
                if sample.name in aside:
                    aside[sample.name].append(sample)
                else:
                    self._sample(sample, out, fresh)
            for name, samples in aside.items():
                if samples:
                    out.append(self._header(name, "gauge", family.documentation))
                    for sample in samples:
                        self._sample(sample, out, fresh)

    def _sample(self, sample: Any, out: list[str], fresh: Cache) -> None:
        name, labels, value = sample.name, sample.labels, sample.value
        # A collector builds its label dicts in one order: no sorting needed for the key.
        key = (name, *labels.items())
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = (series_prefix(name, labels.items()),)
        fresh[key] = prefix
        text = repr(float(value)) if -1e6 < value < 1e6 else format_value(value)  # noqa: PLR2004
        if sample.timestamp is None:
            out.append(f"{prefix[0]}{text}\n")
        else:  # milliseconds, as prometheus_client writes them
            out.append(f"{prefix[0]}{text} {int(float(sample.timestamp) * 1000):d}\n")


def _collectors(registry: CollectorRegistry) -> list[Collector] | list[CollectorRegistry]:
    """The registry's collectors in registration order (private attribute; else the registry)."""
    collectors = getattr(registry, "_collector_to_names", None)
    lock = getattr(registry, "_lock", None)
    if collectors is None or lock is None or getattr(registry, "_target_info", None):
        return [registry]
    with lock:
        return list(collectors)


@dataclass(frozen=True, slots=True)
class _Plain:
    """A plain Counter, Gauge or Histogram, read out of prometheus_client."""

    kind: type
    name: str
    documentation: str
    type_name: str
    labelnames: tuple[str, ...]
    children: list[tuple[tuple[str, ...], Any]]


def _plain(collector: Any) -> _Plain | None:
    """The children of a plain Counter, Gauge or Histogram; None for anything else.

    The one place that reads prometheus_client's private state (``_metrics``, ``_value``,
    ``_buckets``, ``_sum``, ``_upper_bounds``), pinned by tests/unit/test_exposition.py; a
    version that renames them only loses the fast path.
    """
    kind = type(collector)
    if kind not in (Counter, Gauge, Histogram):
        return None
    try:
        if kind is Histogram and collector._upper_bounds[0] < 0:  # no _sum series then
            return None
        labelnames = tuple(collector._labelnames)
        if labelnames:
            with collector._lock:
                children = list(collector._metrics.items())
        else:
            children = [((), collector)]
        for _, child in children:
            value = child._sum if kind is Histogram else child._value
            if type(value) is not MutexValue or "_child_samples" in child.__dict__:
                return None  # multiprocess values, or a set_function gauge
        return _Plain(kind, collector._name, collector._documentation, collector._type, labelnames, children)
    except AttributeError:
        return None


def _fast_series(collector: Any, out: list[str], cache: Cache, fresh: Cache, header: Any, block: Any) -> bool:
    """Append the series of a plain Counter, Gauge or Histogram; False if it is anything else."""
    plain = _plain(collector)
    if plain is None:
        return False
    kind, name = plain.kind, plain.name
    if kind is Counter:
        out.append(header(name + "_total", "counter", plain.documentation))
    else:
        out.append(header(name, plain.type_name, plain.documentation))
    for labelvalues, child in plain.children:
        key = (name, *labelvalues)
        prefixes = cache.get(key)
        if prefixes is None:
            prefixes = _prefixes(kind, name, plain.labelnames, labelvalues, child)
        fresh[key] = prefixes
        if kind is Histogram:
            values = _histogram_values(child)
            out.append(block(key, values, prefixes, lambda v=values: v))
        else:
            out.append(f"{prefixes[0]}{format_value(child._value._value)}\n")  # a float read needs no lock
    return True


def _prefixes(
    kind: type, name: str, labelnames: tuple[str, ...], labelvalues: tuple[str, ...], child: Any
) -> tuple[str, ...]:
    labels = list(zip(labelnames, labelvalues, strict=True))
    if kind is Counter:
        return (series_prefix(name + "_total", labels),)
    if kind is Gauge:
        return (series_prefix(name, labels),)
    return _histogram_prefixes(name, labelnames, labelvalues, [format_value(b) for b in child._upper_bounds])


def _histogram_prefixes(
    name: str, labelnames: tuple[str, ...], labelvalues: tuple[str, ...], les: list[str]
) -> tuple[str, ...]:
    labels = list(zip(labelnames, labelvalues, strict=True))
    buckets = tuple(series_prefix(name + "_bucket", [*labels, ("le", le)]) for le in les)
    return (*buckets, series_prefix(name + "_count", labels), series_prefix(name + "_sum", labels))


def _flat(pairs: list[tuple[str, float]], total: float) -> tuple[float, ...]:
    return (*(count for _, count in pairs), total)


def _histogram_values(child: Any) -> tuple[float, ...]:
    """Cumulative bucket counts (the last one is the count), then the sum."""
    # ``_value`` without the value's lock: a float read is atomic, and the buckets are read one
    # by one anyway (prometheus_client's own exposition gives no snapshot across them either).
    total = 0.0
    values = []
    for bucket in child._buckets:
        total += bucket._value
        values.append(total)
    values.append(child._sum._value)
    return tuple(values)


def _histogram_text(prefixes: tuple[str, ...], values: tuple[float, ...]) -> str:
    """Buckets, ``_count`` (the +Inf bucket's count) and ``_sum`` of one histogram series."""
    lines = [
        f"{prefix}{format_value(value)}\n" for prefix, value in zip(prefixes[:-2], values[:-1], strict=True)
    ]
    lines.append(f"{prefixes[-2]}{format_value(values[-2])}\n")
    lines.append(f"{prefixes[-1]}{format_value(values[-1])}\n")
    return "".join(lines)
