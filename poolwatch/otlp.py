"""The daemon's OTLP push (``otlp:`` settings): every metric of its registry, every ``interval``.

The daemon's pools go through ``poolwatch.otel`` (``db.client.connection.*``), on a meter provider of
its own. Its other families (probes, census, reaper, jobs, PgBouncer, build and target info) live in
prometheus_client objects that the scheduled jobs update; they are read from the registry when the
SDK collects and added to the same export as OpenTelemetry points of the kind and name
``otelnames.OTEL_NAMES`` gives: gauges as gauges, counters as cumulative sums, histograms with their
Prometheus buckets as explicit bounds. The reader is the SDK's periodic one, pushing on its own
thread; ``close()`` pushes a last time. The exporter gets the headers from ``headers_file``; they are
never logged.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from poolwatch import otel
from poolwatch._version import __version__
from poolwatch.metrics import BUILD_INFO, CATALOGUE
from poolwatch.otelnames import OTEL_NAMES, SCHEMA_URL

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.metrics import CallbackOptions
    from opentelemetry.sdk.metrics.export import MetricExporter
    from prometheus_client.metrics_core import Metric as PrometheusFamily
    from prometheus_client.registry import CollectorRegistry

    from poolwatch.config_otlp import OtlpSettings

log = logging.getLogger(__name__)

SCOPE: Final = InstrumentationScope("poolwatch.daemon", __version__, SCHEMA_URL)
# The families read from the registry: every catalogue family but the pools' (poolwatch.otel's) and
# build_info. That one is an observable gauge of the daemon's meter: always 1, so every collection has
# a point, and the SDK hands every collection to the reader (it skips one without any).
_BRIDGED: Final = {spec.full_name: spec for spec in CATALOGUE if spec.group not in ("pool", "build")}


def instance_id() -> str:
    """This process's ``service.instance.id``: host, pid and a random part (a restarted daemon is a
    new instance, as its counters start again)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def exporter(settings: OtlpSettings) -> MetricExporter:
    """The OTLP exporter ``settings`` ask for."""
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=settings.endpoint,
            insecure=settings.endpoint.startswith("http://"),
            # gRPC metadata keys are lower case.
            headers={name.lower(): value for name, value in settings.headers.items()},
            timeout=settings.timeout,
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
        OTLPMetricExporter as HttpExporter,
    )

    return HttpExporter(endpoint=settings.metrics_url, headers=settings.headers, timeout=settings.timeout)


class RegistryBridge:
    """The daemon's non-pool families of one registry, as OpenTelemetry metrics, read on demand."""

    def __init__(self, registry: CollectorRegistry, *, clock: Any = time.time_ns) -> None:
        self._registry = registry
        self._clock = clock
        self._started = clock()  # the start of every cumulative series

    def metrics(self) -> list[Metric]:
        now = self._clock()
        found = []
        for family in self._registry.collect():
            spec = _BRIDGED.get(family.name)
            if spec is None:
                continue
            otel_name = OTEL_NAMES[spec.name]
            data = self._data(family, otel_name.attributes, spec.labels, now)
            if data is not None:
                found.append(Metric(otel_name.name, spec.help, otel_name.unit, data))
        return found

    def _data(
        self, family: PrometheusFamily, attributes: tuple[str, ...], labels: tuple[str, ...], now: int
    ) -> Gauge | Sum | Histogram | None:
        def renamed(sample_labels: dict[str, str]) -> dict[str, str]:
            # An empty value is no value to Prometheus: left out, as poolwatch.otel does.
            return {attributes[labels.index(k)]: v for k, v in sample_labels.items() if k in labels and v}

        if family.type == "gauge":
            points = [NumberDataPoint(renamed(s.labels), self._started, now, s.value) for s in family.samples]
            return Gauge(points) if points else None
        if family.type == "counter":
            points = [
                NumberDataPoint(renamed(s.labels), self._started, now, s.value)
                for s in family.samples
                if s.name.endswith("_total")
            ]
            return Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True) if points else None
        histograms = _histograms(family)
        buckets = [
            HistogramDataPoint(
                renamed(dict(key)),
                self._started,
                now,
                count=int(total_count),
                sum=total,
                # OTLP counts each bucket on its own; Prometheus' le buckets are cumulative.
                bucket_counts=[int(b - a) for a, b in zip([0.0, *counts], counts, strict=False)],
                explicit_bounds=bounds,
                min=None,  # type: ignore[arg-type] # not known: left out of the OTLP point
                max=None,  # type: ignore[arg-type]
            )
            for key, (bounds, counts, total_count, total) in histograms.items()
        ]
        return Histogram(buckets, AggregationTemporality.CUMULATIVE) if buckets else None


def _histograms(
    family: PrometheusFamily,
) -> dict[tuple[tuple[str, str], ...], tuple[list[float], list[float], float, float]]:
    """Per label set: finite bounds, cumulative counts (+Inf last), count and sum."""
    found: dict[tuple[tuple[str, str], ...], tuple[list[float], list[float], float, float]] = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        bounds, counts, count, total = found.get(key, ([], [], 0.0, 0.0))
        if sample.name.endswith("_bucket"):
            le = float(sample.labels["le"])
            if le != float("inf"):
                bounds.append(le)
            counts.append(sample.value)
        elif sample.name.endswith("_count"):
            count = sample.value
        elif sample.name.endswith("_sum"):
            total = sample.value
        found[key] = (bounds, counts, count, total)
    return found


def _build_info(registry: CollectorRegistry) -> Callable[[CallbackOptions], list[Observation]]:
    """``poolwatch.build.info`` as the registry has it: 1, with the versions as attributes."""
    otel_name = OTEL_NAMES[BUILD_INFO.name]

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [
            Observation(
                sample.value,
                {otel_name.attributes[BUILD_INFO.labels.index(k)]: v for k, v in sample.labels.items()},
            )
            for family in registry.restricted_registry([BUILD_INFO.full_name]).collect()
            for sample in family.samples
        ]

    return observe


class _BridgingReader(PeriodicExportingMetricReader):
    """The SDK's periodic reader, adding the bridged families to each export."""

    def __init__(self, bridge: RegistryBridge, resource: Resource, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridge = bridge
        self._resource = resource

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        try:
            bridged = self._bridge.metrics()
        except Exception as exc:  # a push without them beats none
            log.warning("OTLP: the daemon's families could not be read: %s", type(exc).__name__)
        else:
            resources = list(metrics_data.resource_metrics) if metrics_data is not None else []
            if not resources:
                resources = [ResourceMetrics(self._resource, [], self._resource.schema_url or "")]
            first = resources[0]
            # One entry per scope: the OTLP encoder keys scopes by name, and of two keeps the last.
            others = [scope for scope in first.scope_metrics if scope.scope.name != SCOPE.name]
            own = [
                m for scope in first.scope_metrics if scope.scope.name == SCOPE.name for m in scope.metrics
            ]
            merged = ScopeMetrics(SCOPE, [*own, *bridged], SCHEMA_URL)
            resources[0] = replace(first, scope_metrics=[*others, merged])
            metrics_data = MetricsData(resources)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


class OtlpPush:
    """Pushes the daemon's metrics over OTLP every ``settings.interval`` until ``close()``."""

    def __init__(
        self,
        settings: OtlpSettings,
        registry: CollectorRegistry,
        *,
        metric_exporter: MetricExporter | None = None,
        instance: str | None = None,
    ) -> None:
        self.instance = instance or instance_id()
        resource = Resource.create(
            {
                "service.name": "poolwatch",
                "service.version": __version__,
                "service.instance.id": self.instance,
            }
        )
        reader = _BridgingReader(
            RegistryBridge(registry),
            resource,
            metric_exporter if metric_exporter is not None else exporter(settings),
            export_interval_millis=settings.interval * 1000,
            export_timeout_millis=settings.timeout * 1000,
        )
        self._provider = MeterProvider(resource=resource, metric_readers=[reader])
        self._publisher = otel.install(self._provider, registry=registry)
        meter = self._provider.get_meter(SCOPE.name, __version__, schema_url=SCHEMA_URL)
        build = OTEL_NAMES[BUILD_INFO.name]
        meter.create_observable_gauge(
            build.name, callbacks=[_build_info(registry)], unit=build.unit, description=BUILD_INFO.help
        )
        self._closed = False

    def close(self) -> None:
        """Push a last time and stop. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._provider.shutdown()
        finally:
            self._publisher.close()
