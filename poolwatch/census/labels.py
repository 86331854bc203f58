"""Bounded label values: a server-side name becomes a label only if configuration names it.

Everything else is folded into ``other``, so a server with ten thousand users or a client that puts
a request id into application_name cannot create ten thousand series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

OTHER: Final = "other"


@dataclass(frozen=True, slots=True)
class Bounds:
    """The label values allowed for database, user and application; anything else is ``other``."""

    databases: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    applications: frozenset[str] = frozenset()

    def database(self, value: str | None) -> str:
        return value if value is not None and value in self.databases else OTHER

    def user(self, value: str | None) -> str:
        return value if value is not None and value in self.users else OTHER

    def application(self, value: str | None) -> str:
        return value if value is not None and value in self.applications else OTHER


def threshold_label(seconds: float) -> str:
    """``60.0`` -> ``"60"``, ``0.5`` -> ``"0.5"``: the ``idle_over`` label of a threshold."""
    return f"{seconds:g}"
