"""The metrics reference: every family poolwatch exports, read from ``poolwatch.metrics.CATALOGUE``.

Names, types, help and labels come from the catalogue the code builds its metrics from; the label
values listed are those a pool's series exist with from its start (states and reasons), from the
tuples the code itself uses. Nothing is listed by hand: a family added, renamed or re-labelled in the
catalogue changes the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from poolwatch.instrument.recorder import CLOSE_REASONS, CONNECT_ERROR_REASONS
from poolwatch.metrics import CATALOGUE

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


# Label values a pool's series have from its start, by (family, label).
START_VALUES: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("pool_connections", "state"): ("idle", "used"),
    ("pool_connect_errors", "reason"): CONNECT_ERROR_REASONS,
    ("pool_closed", "reason"): CLOSE_REASONS,
}


def families() -> list[Family]:
    """Every family of the daemon and of an application that instruments a pool, by name."""
    found = [
        Family(
            name=spec.full_name,
            type=spec.type,
            help=spec.help,
            labels=spec.labels,
            values={
                label: tuple(sorted(START_VALUES[spec.name, label]))
                for label in spec.labels
                if (spec.name, label) in START_VALUES
            },
            library=spec.group == "pool",
        )
        for spec in CATALOGUE
    ]
    return sorted(found, key=lambda family: family.name)


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
