"""PostgreSQL census from ``pg_stat_activity``: sessions by state, database, user and application,
ages, the oldest open transaction, and how much of ``max_connections`` is in use.

Each census also remembers the session longest idle in a transaction (who, which application, since
when) for the status page, from the same query: nothing is read per request.

Only client backends are counted (walsenders, autovacuum and background workers are not what pools
open). Rows whose state is hidden (a role without ``pg_monitor`` sees other users' sessions without
state) are counted with state ``unknown``. Ages are measured on the server's clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from poolwatch.census.labels import Bounds, threshold_label
from poolwatch.errors import translating

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from sqlalchemy.engine import Engine

    from poolwatch.census.job import Sample
    from poolwatch.census.shared import SharedReadings
    from poolwatch.config import TargetSettings

STATES: Final = ("active", "idle", "idle in transaction", "idle in transaction (aborted)")
IDLE_IN_TRANSACTION_STATES: Final = frozenset(STATES[2:])
UNKNOWN: Final = "unknown"

ACTIVITY_SQL: Final = """
SELECT state, datname, usename, application_name,
       extract(epoch FROM now() - state_change)::float8 AS in_state,
       extract(epoch FROM now() - xact_start)::float8 AS in_transaction, pid
FROM pg_stat_activity
WHERE backend_type = 'client backend'
"""
# reserved_connections (PostgreSQL 16+) are slots for pg_use_reserved_connections members: like the
# superuser reserve, ordinary pool users cannot have them. current_setting(..., true) is NULL before 16.
LIMIT_SQL: Final = """
SELECT current_setting('max_connections')::int
       - current_setting('superuser_reserved_connections')::int
       - coalesce(current_setting('reserved_connections', true)::int, 0)
"""


@dataclass(frozen=True, slots=True)
class Activity:
    """One client backend as the census sees it."""

    state: str | None
    database: str | None
    user: str | None
    application: str | None
    in_state: float | None
    in_transaction: float | None
    pid: int | None = None


Reading = tuple[list[Activity], int]


def fetch(engine: Engine, name: str) -> Reading:
    """The client backends and the usable connection limit, through the target's shared pool."""
    with translating(name), engine.connect() as connection:
        rows = connection.exec_driver_sql(ACTIVITY_SQL).all()
        limit = int(connection.exec_driver_sql(LIMIT_SQL).scalar_one())
        connection.rollback()
    return [Activity(*row) for row in rows], limit


def samples(
    activity: Iterable[Activity],
    limit: int,
    bounds: Bounds,
    pools: Mapping[str, str],
    thresholds: Iterable[float],
) -> list[Sample]:
    """The census as gauge samples. ``pools`` maps an application_name to the pool label it stands
    for; series known in advance (states, thresholds) are present at 0."""
    rows = list(activity)
    thresholds = tuple(thresholds)
    by_labels: Counter[tuple[str, ...]] = Counter()
    by_pool: Counter[tuple[str, str]] = Counter()
    oldest = dict.fromkeys(STATES, 0.0)
    idle_over = dict.fromkeys(thresholds, 0)
    oldest_transaction = 0.0
    for row in rows:
        state = row.state or UNKNOWN
        by_labels[
            state, bounds.database(row.database), bounds.user(row.user), bounds.application(row.application)
        ] += 1
        if row.application is not None and row.application in pools:
            by_pool[pools[row.application], state] += 1
        if row.in_state is not None and state in oldest:
            oldest[state] = max(oldest[state], row.in_state)
        if state == "idle" and row.in_state is not None:
            for threshold in thresholds:
                idle_over[threshold] += row.in_state > threshold
        if row.in_transaction is not None:
            oldest_transaction = max(oldest_transaction, row.in_transaction)
    out: list[Sample] = [("server_connections", labels, float(n)) for labels, n in by_labels.items()]
    out.extend(
        ("server_pool_connections", (pool, state), float(by_pool.pop((pool, state), 0)))
        for pool in sorted(set(pools.values()))
        for state in STATES
    )
    out.extend(("server_pool_connections", labels, float(n)) for labels, n in by_pool.items())
    out.append(("server_max_connections", (), float(limit)))
    out.append(("server_connections_used_ratio", (), len(rows) / limit if limit > 0 else 0.0))
    out.extend(("server_oldest_seconds", (state,), age) for state, age in oldest.items())
    out.append(("server_oldest_transaction_seconds", (), oldest_transaction))
    out.extend(("server_idle_connections", (threshold_label(t),), float(n)) for t, n in idle_over.items())
    return out


def bounds_for(target: TargetSettings, pools: Mapping[str, str]) -> Bounds:
    """Configured names, plus the target's own database and user and the known pools' names."""
    url = make_url(target.url.replace("postgres://", "postgresql://", 1))
    databases = set(target.census.databases) | ({url.database} if url.database else set())
    users = set(target.census.users) | ({url.username} if url.username else set())
    applications = set(target.census.applications) | set(pools)
    return Bounds(frozenset(databases), frozenset(users), frozenset(applications))


def oldest_idle_in_transaction(activity: Iterable[Activity]) -> Activity | None:
    """The session idle in a transaction for longest (measured from ``state_change``), if any."""
    idle = [row for row in activity if row.state in IDLE_IN_TRANSACTION_STATES and row.in_state is not None]
    return max(idle, key=lambda row: row.in_state or 0.0, default=None)


class PostgresCensus:
    """The ``take`` of a PostgreSQL target's census job; it keeps the oldest idle-in-transaction
    session of its last census in ``oldest_idle_in_transaction``."""

    def __init__(
        self,
        target: TargetSettings,
        engine: Engine,
        pools: Mapping[str, str],
        shared: SharedReadings[Reading] | None = None,
    ) -> None:
        self._name = target.name
        self._engine = engine
        self._shared = shared
        self._server = server_key(target)
        self._max_age = target.census.interval / 2
        self._timeout = target.census.timeout
        self._pools = pools
        self._bounds = bounds_for(target, pools)
        self._thresholds = target.census.idle_thresholds
        self.oldest_idle_in_transaction: Activity | None = None

    def __call__(self) -> list[Sample]:
        if self._shared is None:
            activity, limit = fetch(self._engine, self._name)
        else:
            activity, limit = self._shared.read(
                self._server, self._fetch, max_age=self._max_age, timeout=self._timeout
            )
        # One reference assignment: a reader on another thread sees the old row or the new one.
        self.oldest_idle_in_transaction = oldest_idle_in_transaction(activity)
        return samples(activity, limit, self._bounds, self._pools, self._thresholds)

    def _fetch(self) -> Reading:
        return fetch(self._engine, self._name)


def census(
    target: TargetSettings,
    engine: Engine,
    pools: Mapping[str, str],
    shared: SharedReadings[Reading] | None = None,
) -> Callable[[], list[Sample]]:
    """The ``take`` function of a PostgreSQL target's census job; with ``shared``, one reading of
    ``pg_stat_activity`` per server (and login) per tick serves every target on that server."""
    return PostgresCensus(target, engine, pools, shared)


def server_key(target: TargetSettings) -> tuple[str, str | None, int | None, str | None]:
    """What a census reading depends on: the server and the login (not the database: the view is
    server-wide)."""
    url = make_url(target.url.replace("postgres://", "postgresql://", 1))
    return (target.kind, url.host, url.port, url.username)


def known_pools(target: TargetSettings, others: Iterable[TargetSettings] = ()) -> dict[str, str]:
    """application_name -> pool label: census.applications, and poolwatch's own pools that live
    where this target does (PostgreSQL: the same server and database; Redis: the same server).

    A pool is counted by the target of its own database only: with many targets on one server,
    counting every pool under every target would grow the series with the square of the targets
    (the scale benchmark measured 10,075 of 22,982 samples at 50 targets)."""
    pools = {a: a for a in target.census.applications}
    home = _location(target)
    for known in (*others, target):
        if known.kind == target.kind and _location(known) == home:
            pools[known.application_name] = known.name
    return pools


def _location(target: TargetSettings) -> tuple[str, int | None, str | None]:
    """Where a target's sessions live: (host, port, database); Redis clients are per server."""
    parts = urlsplit(target.url)
    database = None if target.kind == "redis" else parts.path.lstrip("/") or None
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or parts.path, port, database)
