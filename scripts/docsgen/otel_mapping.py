"""The OpenTelemetry mapping: every Prometheus family beside its OpenTelemetry instrument.

Read from ``poolwatch.otelnames.OTEL_NAMES`` (the one table ``poolwatch.otel`` and the daemon's OTLP
push build their instruments from) in catalogue order, so the page cannot drift from what is pushed.
"""

from __future__ import annotations

from poolwatch.metrics import CATALOGUE
from poolwatch.otelnames import OTEL_NAMES, SEMCONV_VERSION


def render() -> str:
    """Two tables: the pool families (every instrumented pool), then the daemon's own."""
    lines: list[str] = []
    for title, pool in (("Pools", True), ("Daemon: targets, probes, census, reaper, jobs", False)):
        lines += [f"### {title}", ""]
        if pool:
            note = (
                f"**Conventions** marks the instruments the semantic conventions v{SEMCONV_VERSION} "
                "define (stability: Development); the others are poolwatch's own."
            )
            lines += [note, ""]
        lines += [
            "| Prometheus | OpenTelemetry | instrument | unit | attributes |",
            "|---|---|---|---|---|",
        ]
        for spec in CATALOGUE:
            if (spec.group == "pool") != pool:
                continue
            otel = OTEL_NAMES[spec.name]
            name = f"`{otel.name}`" + (" (**Conventions**)" if otel.semconv else "")
            attributes = "<br>".join(f"`{attribute}`" for attribute in otel.attributes) or " "
            cells = (f"`{spec.samples[0].removesuffix('_bucket')}`", name, otel.instrument, f"`{otel.unit}`")
            lines.append("| " + " | ".join((*cells, attributes)) + " |")
        lines.append("")
    return "\n".join(lines)
