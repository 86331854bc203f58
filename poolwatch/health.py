"""Readiness of a pool for an application's probe: is the server reachable, how fast, is the pool full.

``Database.health()`` and ``RedisDatabase.health()`` return a ``Health``; a readiness endpoint answers
``health.ok``. A saturated pool (every connection in use, at its limit) is reported without a ping:
the ping would queue behind the application's own requests for up to the pool timeout, and a
readiness probe must answer at once. A ping runs on its own thread and is waited for at most
``timeout`` seconds, so a server that accepts connections and never answers cannot hang the probe;
while such a ping is still going, the next check reports it instead of starting another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from poolwatch.errors import first_line, translate

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis
    from sqlalchemy.pool import Pool

    from poolwatch.jobs import BoundedCall

_UNBOUNDED = 2**31  # redis-py's max_connections when "no limit" was asked for


@dataclass(frozen=True, slots=True)
class Health:
    """One readiness check of a pool. ``ok``: reachable and not saturated.

    ``reachable`` is None when the pool was saturated and no ping was sent; ``latency_seconds`` is the
    ping's round trip, checkout included; ``max_connections`` is None for a pool without a limit."""

    reachable: bool | None
    latency_seconds: float | None
    in_use: int
    max_connections: int | None
    saturated: bool
    error: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.reachable) and not self.saturated


def sql_pool_usage(pool: Pool) -> tuple[int, int | None]:
    """Connections checked out of a SQLAlchemy pool, and its limit (None: unlimited or not a
    QueuePool, such as NullPool)."""
    from sqlalchemy.pool import QueuePool  # noqa: PLC0415 - only for an application's health check

    from poolwatch.instrument.sqlalchemy import pool_internals  # noqa: PLC0415

    if not isinstance(pool, QueuePool):
        return 0, None
    max_overflow = pool_internals(pool).max_overflow
    return pool.checkedout(), None if max_overflow < 0 else pool.size() + max_overflow


def redis_pool_usage(client: redis.Redis) -> tuple[int, int | None]:
    """Connections of a redis-py client's pool in use, and its ``max_connections``."""
    from poolwatch.instrument.redis import pool_internals  # noqa: PLC0415

    pool = client.connection_pool
    limit = int(pool.max_connections)
    return len(pool_internals(pool).in_use()), None if limit >= _UNBOUNDED else limit


def ping_within(ping: Callable[[], None], call: BoundedCall, timeout: float) -> float:
    """Run ``ping`` through ``call``; its round trip in seconds. Raises what it raised (translated to
    a poolwatch error) or ``CallTimeoutError`` after ``timeout`` seconds."""
    started = time.perf_counter()
    try:
        call(ping, timeout)
    except Exception as exc:
        translated = translate(exc)
        if translated is None or translated is exc:
            raise
        raise translated from exc
    return time.perf_counter() - started


def check(
    ping: Callable[[], None],
    call: BoundedCall,
    usage: tuple[int, int | None],
    *,
    timeout: float,
    saturation: float,
) -> Health:
    """A ``Health``: saturated when ``in_use >= saturation * max_connections``; otherwise pinged."""
    in_use, limit = usage
    if limit is not None and in_use >= saturation * limit:
        return Health(None, None, in_use, limit, saturated=True, error="pool saturated")
    try:
        latency = ping_within(ping, call, timeout)
    except Exception as exc:
        return Health(
            reachable=False,
            latency_seconds=None,
            in_use=in_use,
            max_connections=limit,
            saturated=False,
            error=first_line(exc),
        )
    return Health(
        reachable=True, latency_seconds=latency, in_use=in_use, max_connections=limit, saturated=False
    )
