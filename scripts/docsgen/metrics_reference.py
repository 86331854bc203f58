"""The metrics reference: every family poolwatch exports, read from the registries the code builds.

The daemon's families come from ``poolwatch.metrics.Metrics`` on a fresh registry plus one pool of
its own; an application's from a SQLite engine instrumented with ``poolwatch.instrument`` on another.
Nothing is listed by hand: a family added, renamed or re-labelled in the code changes the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch.metrics import Metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Sections of the page, by the family name's first word after ``poolwatch_``; "Other" takes the rest.
GROUPS: Final = (
    ("Pools", ("pool", "instrumentation")),
    ("Targets and probes", ("up", "probe", "target")),
    ("Server census", ("server",)),
    ("Reaper and audit", ("reaper", "audit")),
    ("PgBouncer", ("pgbouncer",)),
    ("Scheduled jobs", ("job",)),
    ("Build", ("build",)),
)
_HISTOGRAM_LABELS: Final = frozenset({"le"})


@dataclass(frozen=True)
class Family:
    """One metric family as the reference shows it."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    # Values of labels whose series exist from start-up with more than one value (reasons, states).
    values: dict[str, tuple[str, ...]]
    library: bool

    @property
    def exposed(self) -> str:
        """The name a query uses: counters carry ``_total`` in the exposition."""
        return f"{self.name}_total" if self.type == "counter" else self.name


def families() -> list[Family]:
    """Every family of the daemon and of an application that instruments a pool, by name."""
    daemon = Metrics(CollectorRegistry()).registry
    library = CollectorRegistry()
    engines = [create_engine("sqlite://", poolclass=QueuePool, pool_size=1) for _ in range(2)]
    try:
        for engine, registry in zip(engines, (daemon, library), strict=True):
            poolwatch.instrument(engine, name="reference", registry=registry, leak_threshold=60)
        in_library = {metric.name for metric in library.collect()}
        found = {
            metric.name: _family(metric, daemon, library=metric.name in in_library)
            for metric in daemon.collect()
        }
        for metric in library.collect():
            found.setdefault(metric.name, _family(metric, library, library=True))
    finally:
        for engine in engines:
            engine.dispose()
    return sorted(found.values(), key=lambda family: family.name)


def group(family: Family) -> str:
    word = family.name.removeprefix("poolwatch_").split("_", 1)[0]
    return next((title for title, words in GROUPS if word in words), "Other")


def render() -> str:
    """The reference as Markdown: a table per group of families."""
    listed = families()
    lines: list[str] = []
    for title in [*(title for title, _ in GROUPS), "Other"]:
        rows = [family for family in listed if group(family) == title]
        if not rows:
            continue
        lines += [f"### {title}", "", _exported_by(rows), ""]
        lines += ["| metric | type | labels | meaning |", "|---|---|---|---|"]
        for family in rows:
            cells = (f"`{family.exposed}`", family.type, _labels(family), family.help)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") or " " for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _exported_by(rows: list[Family]) -> str:
    if all(family.library for family in rows):
        return "Exported by the daemon and by every application that instruments a pool."
    if not any(family.library for family in rows):
        return "Exported by the daemon."
    shared = ", ".join(f"`{family.exposed}`" for family in rows if family.library)
    return f"Exported by the daemon; {shared} also by every application that instruments a pool."


def _labels(family: Family) -> str:
    shown = []
    for label in family.labels:
        values = family.values.get(label)
        listed = ": " + ", ".join(f"`{value}`" for value in values) if values else ""
        shown.append(f"`{label}`{listed}")
    return "<br>".join(shown)


def _family(metric: Metric, registry: CollectorRegistry, *, library: bool) -> Family:
    seen: dict[str, set[str]] = {}
    for sample in metric.samples:
        for label, value in sample.labels.items():
            if label not in _HISTOGRAM_LABELS:
                seen.setdefault(label, set()).add(value)
    labels = tuple(seen) if seen else _declared_labels(metric.name, registry)
    return Family(
        name=metric.name,
        type=metric.type,
        help=metric.documentation,
        labels=labels,
        values={label: tuple(sorted(values)) for label, values in seen.items() if len(values) > 1},
        library=library,
    )


def _declared_labels(name: str, registry: CollectorRegistry) -> tuple[str, ...]:
    """The label names of a family that has no series yet (census families before a census).

    prometheus_client offers no public accessor for a metric's label names; these two attributes
    have been stable across its releases. A table-driven catalogue in poolwatch would replace this.
    """
    collector = registry._names_to_collectors.get(name)  # noqa: SLF001
    return tuple(getattr(collector, "_labelnames", ()))
