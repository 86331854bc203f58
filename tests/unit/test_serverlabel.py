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
