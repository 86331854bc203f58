"""The OpenTelemetry name, instrument, unit and attributes of every family in ``metrics.CATALOGUE``.

The pool families map onto the semantic conventions' ``db.client.connection.*`` instruments (v1.44,
``SEMCONV_VERSION``) where those define one, with the names, instruments and units they give; what the
conventions lack keeps poolwatch's meaning under the ``poolwatch.`` namespace. The daemon's own
families (probes, census, reaper, jobs, PgBouncer) follow one rule: ``poolwatch.<first word>.<rest>``,
a ``_seconds`` / ``_bytes`` / ``_ratio`` suffix becoming the unit. This table is the one mapping:
``poolwatch.otel`` builds its instruments from it, and the docs' mapping table is generated from it.
Nothing here imports OpenTelemetry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from poolwatch.metrics import CATALOGUE

if TYPE_CHECKING:
    from poolwatch.metrics import MetricSpec

SEMCONV_VERSION: Final = "1.44.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"
SERVER: Final = "poolwatch.server"  # host:port/database, credential-free
HOLDER: Final = "poolwatch.holder"

Instrument = Literal["Counter", "UpDownCounter", "Gauge", "Histogram"]


@dataclass(frozen=True, slots=True)
class OtelName:
    """How one family reads in OpenTelemetry. ``attributes`` follow the Prometheus labels in order;
    ``semconv``: the instrument is defined by the semantic conventions (Development stability)."""

    name: str
    instrument: Instrument
    unit: str
    attributes: tuple[str, ...]
    semconv: bool = False


def _pool(name: str, instrument: Instrument, unit: str, *more: str, semconv: bool = False) -> OtelName:
    return OtelName(name, instrument, unit, (POOL_NAME, SERVER, *more), semconv=semconv)


def _conventional(name: str, instrument: Instrument, unit: str, *more: str) -> OtelName:
    return _pool(f"db.client.connection.{name}", instrument, unit, *more, semconv=True)


# The pool families, by their catalogue name.
POOL_NAMES: Final[dict[str, OtelName]] = {
    "pool_connections": _conventional("count", "UpDownCounter", "{connection}", STATE),
    "pool_max_connections": _conventional("max", "UpDownCounter", "{connection}"),
    "pool_size": _conventional("idle.max", "UpDownCounter", "{connection}"),
    "pool_min_idle": _conventional("idle.min", "UpDownCounter", "{connection}"),
    "pool_overflow": _pool("poolwatch.pool.overflow", "UpDownCounter", "{connection}"),
    "pool_pending_requests": _conventional("pending_requests", "UpDownCounter", "{request}"),
    "pool_wait_seconds": _conventional("wait_time", "Histogram", "s"),
    "pool_use_seconds": _conventional("use_time", "Histogram", "s", HOLDER),
    "pool_create_seconds": _conventional("create_time", "Histogram", "s"),
    "pool_checkouts": _pool("poolwatch.pool.checkouts", "Counter", "{checkout}"),
    "pool_timeouts": _conventional("timeouts", "Counter", "{timeout}"),
    # error.type: the general conventions' attribute for the class of error an operation ended with.
    "pool_connect_errors": _pool("poolwatch.pool.connect_errors", "Counter", "{error}", "error.type"),
    "pool_closed": _pool("poolwatch.pool.closes", "Counter", "{connection}", "poolwatch.close.reason"),
    "pool_leaked_connections": _pool("poolwatch.pool.leaked", "UpDownCounter", "{connection}", HOLDER),
    "pool_leaks": _pool("poolwatch.pool.leaks", "Counter", "{leak}", HOLDER),
    "instrumentation_errors": _pool("poolwatch.instrumentation.errors", "Counter", "{error}"),
    "pool_inherited_checkouts": _pool("poolwatch.pool.inherited_checkouts", "Counter", "{checkout}"),
}

_INSTRUMENTS: Final[dict[str, Instrument]] = {
    "counter": "Counter",
    "gauge": "Gauge",
    "histogram": "Histogram",
}
_UNITS: Final = (("_seconds", "s"), ("_bytes", "By"), ("_ratio", "1"))


def derived(spec: MetricSpec) -> OtelName:
    """The rule for the daemon's families: ``probe_duration_seconds`` -> ``poolwatch.probe.duration``
    in ``s``; ``job_last_success_timestamp_seconds`` -> ``poolwatch.job.last_success_timestamp``."""
    name, unit = spec.name, "1"
    for suffix, suffix_unit in _UNITS:
        if name.endswith(suffix):
            name, unit = name.removesuffix(suffix), suffix_unit
            break
    first, _, rest = name.partition("_")
    dotted = f"poolwatch.{first}.{rest}" if rest else f"poolwatch.{first}"
    attributes = tuple(POOL_NAME if label == "pool" else f"poolwatch.{label}" for label in spec.labels)
    return OtelName(dotted, _INSTRUMENTS[spec.type], unit, attributes)


# Every family of the catalogue, by its catalogue name (``MetricSpec.name``).
OTEL_NAMES: Final[dict[str, OtelName]] = {
    spec.name: POOL_NAMES.get(spec.name) or derived(spec) for spec in CATALOGUE
}
