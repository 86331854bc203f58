"""Bounded label values: a server-side name becomes a label only if configuration names it.

Everything else is folded into the empty value ``FOLDED``, so a server with ten thousand users or a
client that puts a request id into application_name cannot create ten thousand series. The empty
value is the one name nothing can have: PostgreSQL refuses empty role and database names, an empty
Redis client name is no name, and the configuration refuses empty names. So a role, database or
application really called ``other`` keeps its own series, apart from the fold. (In Prometheus an
empty label value is the same as no label: ``{user=""}`` selects the folded sessions.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

FOLDED: Final = ""


@dataclass(frozen=True, slots=True)
class Bounds:
    """The label values allowed for database, user and application; anything else is ``FOLDED``."""

    databases: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    applications: frozenset[str] = frozenset()

    def database(self, value: str | None) -> str:
        return value if value and value in self.databases else FOLDED

    def user(self, value: str | None) -> str:
        return value if value and value in self.users else FOLDED

    def application(self, value: str | None) -> str:
        return value if value and value in self.applications else FOLDED


def threshold_label(seconds: float) -> str:
    """``60.0`` -> ``"60"``, ``0.5`` -> ``"0.5"``: the ``idle_over`` label of a threshold."""
    return f"{seconds:g}"
