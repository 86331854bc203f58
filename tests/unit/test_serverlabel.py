"""The ``server`` label names host, port and database for every URL shape, never a credential."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy.engine import make_url

from poolwatch.serverlabel import redis_server, sql_server

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("url", "label"),
    [
        (f"postgresql+psycopg2://app:{SECRET}@DB.example.com:6543/orders", "db.example.com:6543/orders"),
        (f"postgresql://app:{SECRET}@db/orders", "db:5432/orders"),  # the default port, written out
        (f"postgresql+asyncpg://app:{SECRET}@db:5432/orders?ssl=require", "db:5432/orders"),
        ("postgresql://app@/orders?host=/var/run/postgresql", "localhost:5432/orders"),  # Unix socket
        ("postgresql://app@/orders?host=replica-1,replica-2", "replica-1:5432/orders"),
        (f"postgresql://app:{SECRET}@[::1]:5432/orders", "[::1]:5432/orders"),
        (f"mysql+pymysql://app:{SECRET}@maria:3307/shop?charset=utf8mb4", "maria:3307/shop"),
        (f"mysql+pymysql://app:{SECRET}@maria/shop", "maria:3306/shop"),
        ("sqlite:////var/lib/app/orders.db", "orders.db"),
        ("sqlite:///relative/cache.sqlite", "cache.sqlite"),
        ("sqlite://", "memory"),
        ("sqlite:///:memory:", "memory"),
    ],
)
def test_sql_url_shapes(url: str, label: str) -> None:
    assert sql_server(make_url(url)) == label


@pytest.mark.parametrize(
    ("url", "label"),
    [
        (f"redis://:{SECRET}@Cache.internal:6380/2", "cache.internal:6380/2"),
        (f"redis://user:{SECRET}@cache/0", "cache:6379/0"),
        (f"rediss://:{SECRET}@cache:6390", "cache:6390/0"),
        (f"unix://:{SECRET}@/run/redis/redis.sock?db=3", "redis.sock/3"),
    ],
)
def test_redis_url_shapes(url: str, label: str) -> None:
    pool = redis.ConnectionPool.from_url(url)
    assert redis_server(pool.connection_kwargs) == label


def test_no_label_carries_a_user_password_or_query() -> None:
    labels = [
        sql_server(make_url(f"postgresql://owner:{SECRET}@db:5432/orders?password={SECRET}&user=owner")),
        redis_server(redis.ConnectionPool.from_url(f"redis://owner:{SECRET}@cache:6379/0").connection_kwargs),
    ]
    for label in labels:
        assert SECRET not in label
        assert "owner" not in label
        assert "@" not in label
        assert "?" not in label


@pytest.mark.parametrize(
    ("dsn", "label"),
    [
        (
            f"postgresql://app:{SECRET}@DB.example.com:6543/orders?sslmode=require",
            "db.example.com:6543/orders",
        ),
        (f"host=db port=5433 dbname=orders user=app password={SECRET}", "db:5433/orders"),
        ("dbname=orders host=/var/run/postgresql", "localhost:5432/orders"),  # Unix socket
        ("postgresql://app@replica-1,replica-2/orders", "replica-1:5432/orders"),
    ],
)
def test_pool_adapters_label_the_server_their_pool_connects_to(dsn: str, label: str) -> None:
    """psycopg2.pool and psycopg_pool pools built without connecting (minconn 0, open=False)."""
    import psycopg2.pool
    import psycopg_pool
    from prometheus_client import CollectorRegistry

    import poolwatch

    psycopg2_pool = psycopg2.pool.ThreadedConnectionPool(0, 2, dsn)
    psycopg3_pool = psycopg_pool.ConnectionPool(dsn, min_size=1, open=False)
    registry = CollectorRegistry()
    assert poolwatch.instrument(psycopg2_pool, name="p2", registry=registry).server == label
    assert poolwatch.instrument(psycopg3_pool, name="p3", registry=registry).server == label
    # server= still wins, even empty
    given = psycopg2.pool.ThreadedConnectionPool(0, 2, dsn)
    assert poolwatch.instrument(given, name="given", registry=registry, server="").server == ""


@pytest.mark.parametrize(
    ("dsn", "kwargs", "label"),
    [
        (f"postgresql://app:{SECRET}@DB.example.com:6543/orders", {}, "db.example.com:6543/orders"),
        ("postgresql:///orders?host=/run/postgresql", {}, "localhost:5432/orders"),
        (None, {"host": "db", "port": 6000, "database": "shop", "password": SECRET}, "db:6000/shop"),
        (f"postgresql://app:{SECRET}@db/orders", {"database": "other"}, "db:5432/other"),  # keywords win
    ],
)
def test_asyncpg_and_redis_asyncio_pools_are_labelled_from_their_arguments(
    dsn: str | None, kwargs: dict[str, object], label: str
) -> None:
    import asyncio

    import asyncpg
    import redis.asyncio
    from prometheus_client import CollectorRegistry

    import poolwatch

    async def labels() -> tuple[str, str]:
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=1, **kwargs)  # connects on demand
        cache = redis.asyncio.ConnectionPool.from_url(f"redis://:{SECRET}@Cache:6380/2")
        registry = CollectorRegistry()
        try:
            return (
                poolwatch.instrument(pool, name="apg", registry=registry).server,
                poolwatch.instrument_redis(cache, name="cache", registry=registry).server,
            )
        finally:
            await pool.close()

    assert asyncio.run(labels()) == (label, "cache:6380/2")


def test_a_nullpool_engine_is_labelled_from_its_url() -> None:
    from prometheus_client import CollectorRegistry
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    import poolwatch

    engine = create_engine(f"postgresql+psycopg2://app:{SECRET}@PgBouncer:6432/orders", poolclass=NullPool)
    instrumentation = poolwatch.instrument(engine, name="bouncer", registry=CollectorRegistry())
    assert instrumentation.server == "pgbouncer:6432/orders"
