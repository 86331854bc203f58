"""The /metrics body: Prometheus text format 0.0.4, rendered in a fraction of prometheus_client's time.

Why this exists: ``prometheus_client.generate_latest`` builds two ``Sample`` tuples and a label dict
per sample, formats every histogram bound on every scrape and, for OpenMetrics, escapes names one
character at a time. At 100 targets (19,000 samples) that takes ~140 ms a scrape, far from the 20 ms
budget. Here the text before each value (name and labels, escaped) is built once per series.

Each family's text (bytes) is kept with the label values and values it was written from. A scrape
reads the values (C-level ``map`` over the children, no ``Sample`` or label dict), and a family
whose series and values are all the same as last time is the same bytes object again; in a family
that changed, only the series whose value changed are written anew (a histogram series through
one ``%`` template), the others cut out of the last body. Between two scrapes of a quiet daemon
most families do not change at all, and an unchanged family lets the endpoint reuse its gzip output
too (gzipparts.py).

Counters, gauges and histograms of prometheus_client (in-process mode) take the fast path, which
reads their children and values through private attributes: that coupling lives in
``Renderer._plain`` and the helpers it calls, pinned by a test that compares the output with
``generate_latest`` on the supported versions, and any collector it does not recognise (custom
scrape-time collectors, summaries, info and enum metrics, ``set_function`` gauges, multiprocess
values) goes through the public ``collect()``. ``_created`` series are not exported: text format
0.0.4 has no use for them and they would double the counter and histogram series.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    from poolwatch.metrics import Rows, RowsSource

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
# A series' text less its values: a counter's or gauge's text before its value; a histogram's every
# line with ``%s`` for each value (its buckets, then count and sum; ``%`` in labels doubled).
Template = str

# C-level readers for the fast path (``map`` over children, no Python frame per series).
_VALUE: Final = operator.attrgetter("_value")
_CHILD_VALUE: Final = operator.attrgetter("_value._value")
_HAS_FUNCTION: Final = operator.methodcaller("__contains__", "_child_samples")
_FIRST: Final = operator.itemgetter(0)
_SECOND: Final = operator.itemgetter(1)


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


@dataclass(frozen=True, slots=True)
class _Family:
    """One family's text as last rendered (bytes, as served), and what it was written from."""

    header: str
    keys: list[Any]  # each series' label values, in order
    values: list[Any]  # each series' value(s), in the same order
    children: list[Any]  # a plain metric's children, whose value objects were checked
    templates: list[Template]
    body: bytes  # the header, then every series' text
    ends: array[int]  # where the header, then each series' text, ends in ``body``


class Renderer:
    """Renders one registry; keeps each family's text between scrapes. Thread-safe."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        # By collector (a plain metric) or family name (rows): a registry's names are unique.
        self._families: dict[object, _Family] = {}
        self._fresh: dict[object, _Family] = {}
        self._prefixes: Cache = {}  # the general path's
        self._headers: dict[tuple[str, str, str], str] = {}

    def render(self) -> bytes:
        return b"".join(self.parts())

    def parts(self) -> list[bytes]:
        """The body as one bytes object per family (or per collector, on the general path): the
        same object as last time for a family that did not change (gzipparts.py counts on it)."""
        with self._lock:
            fresh: Cache = {}
            out: list[bytes] = []
            for collector in _collectors(self._registry):
                # A RowsSource (metrics.py), found by its method: cheaper than a protocol isinstance.
                if callable(getattr(collector, "rows", None)):
                    source = cast("RowsSource", collector)
                    out.extend(self._rows(family) for family in source.rows())
                    continue
                body = self._plain(collector)
                if body is None:
                    text: list[str] = []
                    self._collected(collector.collect(), text, fresh)
                    body = "".join(text).encode()
                out.append(body)
            # Only what this scrape saw stays cached: removed targets don't leak.
            self._families, self._fresh = self._fresh, {}
            self._prefixes = fresh
            return out

    def _header(self, name: str, kind: str, documentation: str) -> str:
        key = (name, kind, documentation)
        header = self._headers.get(key)
        if header is None:
            doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
            header = f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(kind, 'untyped')}\n"
            self._headers[key] = header
        return header

    def _family(
        self,
        ident: object,
        header: str,
        keys: list[Any],
        values: list[Any],
        template: Callable[[Any, Any], Template],
        write: Callable[[Template, Any], str],
        children: list[Any] | None = None,
    ) -> bytes:
        """A family's text: the last scrape's while its series and values are the same; else the
        series whose value changed written anew (``write(template, value)``), the others' reused.

        Values compare with ``==``: a gauge going from 0.0 to -0.0 goes on reading ``0.0``.
        """
        old = self._families.get(ident)
        if old is not None and old.header is header and old.keys == keys:
            if old.values == values:
                self._fresh[ident] = old
                return old.body
            templates, view = old.templates, memoryview(old.body)
            # A series' text is cut out of the last body (no copy until the join), not kept apart.
            pieces = [
                view[start:end] if value == was else write(text, value).encode()
                for (start, end), text, value, was in zip(
                    itertools.pairwise(old.ends), templates, values, old.values, strict=True
                )
            ]
        else:  # series came or went: the templates of those that stay are kept
            known = {} if old is None else dict(zip(old.keys, old.templates, strict=True))
            templates = [
                known.get(key) or template(key, value) for key, value in zip(keys, values, strict=True)
            ]
            pieces = [write(text, value).encode() for text, value in zip(templates, values, strict=True)]
        head = header.encode()
        body = b"".join([head, *pieces])
        ends = array("Q", itertools.accumulate(map(len, pieces), initial=len(head)))
        self._fresh[ident] = _Family(header, keys, values, children or [], templates, body, ends)
        return body

    def _rows(self, rows: Rows) -> bytes:
        spec = rows.spec
        name, kind, labelnames = spec.full_name, spec.type, spec.labels
        series = name + "_total" if kind == "counter" else name
        header = self._header(series, kind, spec.help)
        keys, values = list(map(_FIRST, rows.rows)), list(map(_SECOND, rows.rows))
        if kind == "histogram":

            def buckets(labelvalues: tuple[str, ...], value: Any) -> Template:
                return _histogram_template(name, labelnames, labelvalues, [le for le, _ in value[0]])

            return self._family(name, header, keys, values, buckets, _pairs_text)

        def scalar(labelvalues: tuple[str, ...], _value: object) -> Template:
            return series_prefix(series, zip(labelnames, labelvalues, strict=True))

        return self._family(name, header, keys, values, scalar, _line)

    def _plain(self, collector: Any) -> bytes | None:
        """The text of a plain Counter, Gauge or Histogram; None for anything else.

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
            name, labelnames = collector._name, tuple(collector._labelnames)
            if labelnames:
                with collector._lock:
                    keys, children = list(collector._metrics), list(collector._metrics.values())
            else:
                keys, children = [()], [collector]
            old = self._families.get(collector)
            # Multiprocess values are no MutexValues; a child keeps its value object for life, so
            # the children of the last scrape need no second look. A set_function comes any time.
            if (old is None or old.children != children) and not _mutex_values(kind, children):
                return None
            if kind is Gauge and any(map(_HAS_FUNCTION, map(vars, children))):
                return None
            if kind is Histogram:
                bounds = collector._upper_bounds

                def buckets(labelvalues: tuple[str, ...], _value: object) -> Template:
                    les = [format_value(bound) for bound in bounds]
                    return _histogram_template(name, labelnames, labelvalues, les)

                header = self._header(name, collector._type, collector._documentation)
                values = [_histogram_values(child) for child in children]
                return self._family(collector, header, keys, values, buckets, _histogram_text, children)
            series = name + "_total" if kind is Counter else name
            header = self._header(series, collector._type, collector._documentation)

            def scalar(labelvalues: tuple[str, ...], _value: object) -> Template:
                return series_prefix(series, zip(labelnames, labelvalues, strict=True))

            # A float read needs no lock.
            values = list(map(_CHILD_VALUE, children))
            return self._family(collector, header, keys, values, scalar, _line, children)
        except AttributeError:
            return None

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


def _mutex_values(kind: type, children: list[Any]) -> bool:
    """True if every child keeps its value in-process (not a multiprocess file)."""
    if kind is Histogram:
        return all(type(child._sum) is MutexValue for child in children)
    return all(type(child._value) is MutexValue for child in children)


def _line(prefix: Template, value: float) -> str:
    """A counter or gauge series' line."""
    text = repr(float(value)) if -1e6 < value < 1e6 else format_value(value)  # noqa: PLR2004
    return f"{prefix}{text}\n"


def _histogram_template(
    name: str, labelnames: tuple[str, ...], labelvalues: tuple[str, ...], les: list[str]
) -> Template:
    labels = list(zip(labelnames, labelvalues, strict=True))
    prefixes = [series_prefix(name + "_bucket", [*labels, ("le", le)]) for le in les]
    prefixes += [series_prefix(name + "_count", labels), series_prefix(name + "_sum", labels)]
    return "".join(prefix.replace("%", "%%") + "%s\n" for prefix in prefixes)


def _histogram_values(child: Any) -> tuple[float, ...]:
    """Cumulative bucket counts (the last one is the count), then the sum."""
    # ``_value`` without the value's lock: a float read is atomic, and the buckets are read one
    # by one anyway (prometheus_client's own exposition gives no snapshot across them either).
    return (*itertools.accumulate(map(_VALUE, child._buckets)), child._sum._value)


def _pairs_text(template: Template, value: tuple[list[tuple[str, float]], float]) -> str:
    """A histogram row's text: ``(cumulative (le, count) pairs ending with +Inf, sum)``."""
    pairs, total = value
    return _histogram_text(template, (*map(_SECOND, pairs), total))


def _histogram_text(template: Template, values: tuple[float, ...]) -> str:
    """Buckets, ``_count`` (the +Inf bucket's count) and ``_sum`` of one histogram series."""
    count, total = values[-2], values[-1]
    # Counts are never negative and the largest is the last: ``repr`` writes them all as Prometheus
    # does below 1e6, in C; so it does the sum unless that is NaN, infinite or large.
    if count < 1e6 and -1e6 < total < 1e6:  # noqa: PLR2004
        return template % tuple(map(repr, map(float, (*values[:-1], count, total))))
    return template % tuple(map(format_value, (*values[:-1], count, total)))
