"""Reading OpenTelemetry metrics in tests: from the SDK's in-memory reader, by name and attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader


@dataclass(frozen=True)
class Family:
    """One metric of a collection: its unit, kind (``Sum``/``Gauge``/``Histogram``), monotonicity and
    points as ``(attributes, value)``; a histogram's value is its data point."""

    name: str
    unit: str
    kind: str
    monotonic: bool | None
    points: list[tuple[dict[str, Any], Any]]

    def value(self, **attributes: str) -> Any:
        """The value of the one point whose attributes include ``attributes`` (dots as ``__``)."""
        wanted = {key.replace("__", "."): value for key, value in attributes.items()}
        found = [value for labels, value in self.points if wanted.items() <= labels.items()]
        assert len(found) == 1, (self.name, wanted, self.points)
        return found[0]


def collect(reader: InMemoryMetricReader, timeout_millis: float | None = None) -> dict[str, Family]:
    """Every metric of one collection, by name. ``timeout_millis``: the SDK's bound on the callbacks
    (10 s unless given), for a collection that records a great many samples."""
    if timeout_millis is not None:
        reader.collect(timeout_millis=timeout_millis)  # the reader keeps it for get_metrics_data()
        data = reader.get_metrics_data()  # collects once more: cumulative, nothing new
    else:
        data = reader.get_metrics_data()
    found: dict[str, Family] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = type(metric.data).__name__
                points = [
                    (dict(point.attributes or {}), point if kind == "Histogram" else getattr(point, "value"))  # noqa: B009
                    for point in metric.data.data_points
                ]
                monotonic = getattr(metric.data, "is_monotonic", None)
                found[metric.name] = Family(metric.name, metric.unit or "", kind, monotonic, points)
    return found
