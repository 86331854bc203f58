"""Which pools a target's census counts: its own and those living where it does, no others."""

from __future__ import annotations

from poolwatch.census.postgres import known_pools
from poolwatch.config import validate


def targets(*specs: tuple[str, str, str]):
    return validate({"targets": [{"name": n, "kind": k, "url": u} for n, k, u in specs]}).targets


def test_a_postgres_census_counts_pools_of_its_own_server_and_database_only() -> None:
    orders, replica, billing, elsewhere = targets(
        ("orders", "postgres", "postgresql://u@db:5432/orders"),
        ("orders_ro", "postgres", "postgresql://ro@db:5432/orders"),
        ("billing", "postgres", "postgresql://u@db:5432/billing"),
        ("other", "postgres", "postgresql://u@db2:5432/orders"),
    )
    pools = known_pools(orders, (replica, billing, elsewhere))
    assert pools == {"poolwatch-orders": "orders", "poolwatch-orders_ro": "orders_ro"}


def test_configured_applications_are_always_counted() -> None:
    (only,) = validate(
        {
            "targets": [
                {
                    "name": "o",
                    "kind": "postgres",
                    "url": "postgresql://u@db/o",
                    "census": {"applications": ["web"]},
                }
            ]
        }
    ).targets
    assert known_pools(only) == {"web": "web", "poolwatch-o": "o"}


def test_a_redis_census_counts_pools_of_its_server_whatever_the_database_number() -> None:
    cache, sessions, remote, pg = targets(
        ("cache", "redis", "redis://r:6379/0"),
        ("sessions", "redis", "redis://r:6379/1"),
        ("remote", "redis", "redis://r2:6379/0"),
        ("pg", "postgres", "postgresql://u@r:6379/x"),
    )
    assert known_pools(cache, (sessions, remote, pg)) == {
        "poolwatch-cache": "cache",
        "poolwatch-sessions": "sessions",
    }
