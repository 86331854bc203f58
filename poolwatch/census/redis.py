"""Redis census from ``INFO clients`` and ``CLIENT LIST``: clients by kind and (bounded) name,
maxclients, and how many have been idle past each configured threshold.

Each client is counted once, under the first state that applies: ``master`` / ``replica`` /
``monitor`` (links, not pool connections), ``pubsub`` (subscribed), ``blocked`` (in BLPOP and
friends), otherwise ``connected``. Idle counts are counts: never one series per client.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

from poolwatch.census.labels import Bounds, threshold_label
from poolwatch.errors import translating

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    import redis

    from poolwatch.census.job import Sample
    from poolwatch.census.shared import SharedReadings
    from poolwatch.config import TargetSettings

RedisKind = Literal["normal", "pubsub", "replica", "monitor", "master"]
STATES: Final = ("connected", "blocked", "pubsub", "replica", "monitor", "master")


@dataclass(frozen=True, slots=True)
class RedisClient:
    """One line of ``CLIENT LIST``, parsed. ``kind`` comes from the flags and subscription counts."""

    id: int
    addr: str
    name: str
    user: str
    db: int
    idle: float
    kind: RedisKind
    blocked: bool = False
    in_multi: bool = False


def _int(fields: Mapping[str, Any], key: str) -> int:
    try:
        return int(fields.get(key, 0))
    except (TypeError, ValueError):
        return 0


def parse_client(fields: Mapping[str, Any]) -> RedisClient:
    """A ``CLIENT LIST`` entry (as redis-py's ``client_list()`` returns it) as a ``RedisClient``."""
    flags = str(fields.get("flags", ""))
    kind: RedisKind = "normal"
    if "M" in flags:
        kind = "master"
    elif "O" in flags:
        kind = "monitor"  # a MONITOR client also carries S on some versions: test O first
    elif "S" in flags:
        kind = "replica"
    elif "P" in flags or any(_int(fields, k) > 0 for k in ("sub", "psub", "ssub")):
        kind = "pubsub"
    return RedisClient(
        id=_int(fields, "id"),
        addr=str(fields.get("addr", "")),
        name=str(fields.get("name", "")),
        user=str(fields.get("user", "default")),
        db=_int(fields, "db"),
        idle=float(_int(fields, "idle")),
        kind=kind,
        blocked="b" in flags,
        in_multi="x" in flags,
    )


def state_of(client: RedisClient) -> str:
    if client.kind != "normal":
        return client.kind
    return "blocked" if client.blocked else "connected"


def fetch(client: redis.Redis, name: str) -> tuple[list[RedisClient], dict[str, Any]]:
    with translating(name):
        info = client.info("clients")
        clients = [parse_client(fields) for fields in client.client_list()]
    return clients, info


def samples(
    clients: Iterable[RedisClient],
    info: Mapping[str, Any],
    bounds: Bounds,
    pools: Mapping[str, str],
    thresholds: Iterable[float],
) -> list[Sample]:
    rows = list(clients)
    thresholds = tuple(thresholds)
    by_labels: Counter[tuple[str, ...]] = Counter()
    by_pool: Counter[tuple[str, str]] = Counter()
    oldest = dict.fromkeys(STATES, 0.0)
    idle_over = dict.fromkeys(thresholds, 0)
    for row in rows:
        state = state_of(row)
        by_labels[state, "", "", bounds.application(row.name)] += 1
        if row.name in pools:
            by_pool[pools[row.name], state] += 1
        oldest[state] = max(oldest[state], row.idle)
        for threshold in thresholds:
            idle_over[threshold] += row.idle > threshold
    maxclients = _int(info, "maxclients")
    connected = _int(info, "connected_clients") or len(rows)
    out: list[Sample] = [("server_connections", labels, float(n)) for labels, n in by_labels.items()]
    out.extend(
        ("server_pool_connections", (pool, state), float(by_pool.pop((pool, state), 0)))
        for pool in sorted(set(pools.values()))
        for state in ("connected", "blocked", "pubsub")
    )
    out.extend(("server_pool_connections", labels, float(n)) for labels, n in by_pool.items())
    if maxclients > 0:
        out.append(("server_max_connections", (), float(maxclients)))
        out.append(("server_connections_used_ratio", (), connected / maxclients))
    out.extend(("server_oldest_seconds", (state,), age) for state, age in oldest.items())
    out.extend(("server_idle_connections", (threshold_label(t),), float(n)) for t, n in idle_over.items())
    return out


Reading = tuple[list[RedisClient], dict[str, Any]]


def census(
    target: TargetSettings,
    client: redis.Redis,
    pools: Mapping[str, str],
    shared: SharedReadings[Reading] | None = None,
) -> Callable[[], list[Sample]]:
    """The ``take`` function of a Redis target's census job; with ``shared``, one ``CLIENT LIST``
    per server (and login) per tick serves every target on that server (the list is server-wide)."""
    bounds = Bounds(applications=frozenset(target.census.applications) | frozenset(pools))
    thresholds = target.census.idle_thresholds
    parts = urlsplit(target.url)
    key = (target.kind, parts.hostname or parts.path, _port(target.url), parts.username)

    def read() -> Reading:
        return fetch(client, target.name)

    def take() -> list[Sample]:
        if shared is None:
            clients, info = read()
        else:
            clients, info = shared.read(
                key, read, max_age=target.census.interval / 2, timeout=target.census.timeout
            )
        return samples(clients, info, bounds, pools, thresholds)

    return take


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None
