"""Connect errors by reason for every PostgreSQL driver and Redis, from real servers refusing:
too_many_connections (SQLSTATE 53300, Redis maxclients), auth and refused."""

from __future__ import annotations

import asyncio
import uuid

import psycopg2
import psycopg2.pool
import pytest
import redis
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import poolwatch
from poolwatch.errors import reason_of
from tests.poolmetrics import sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limited_role(pg) -> str:
    """A role allowed no connection at all: connecting fails with SQLSTATE 53300."""
    name = f"limited_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw' CONNECTION LIMIT 0")
    return name


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg", "postgresql+asyncpg"])
def test_a_connection_limit_is_too_many_connections_for_every_driver(pg, limited_role, driver) -> None:
    registry = CollectorRegistry()
    url = pg.url(user=limited_role, password="pw", driver=driver)
    if driver.endswith("asyncpg"):
        from sqlalchemy.ext.asyncio import create_async_engine

        async def attempt() -> None:
            engine = create_async_engine(url, poolclass=NullPool)
            poolwatch.instrument(engine, name="limit", registry=registry)
            with pytest.raises(DBAPIError) as caught:
                await engine.connect()
            assert reason_of(caught.value) == "too_many_connections"
            await engine.dispose()

        asyncio.run(attempt())
    else:
        engine = create_engine(url, poolclass=NullPool)
        poolwatch.instrument(engine, name="limit", registry=registry)
        with pytest.raises(DBAPIError):
            engine.connect()
    assert sample(registry, "pool_connect_errors_total", "limit", reason="too_many_connections") == 1


def test_psycopg2_pool_and_asyncpg_pool_classify_too(pg, limited_role) -> None:
    import asyncpg

    registry = CollectorRegistry()
    pool = psycopg2.pool.ThreadedConnectionPool(0, 2, pg.dsn())
    poolwatch.instrument(pool, name="p2", registry=registry)
    pool._kwargs = {}  # connect from now on as the limited role
    pool._args = (pg.dsn(user=limited_role, password="pw"),)
    with pytest.raises(psycopg2.OperationalError):
        pool.getconn()
    assert sample(registry, "pool_connect_errors_total", "p2", reason="too_many_connections") == 1
    pool.closeall()

    async def body() -> None:
        apool = await asyncpg.create_pool(pg.url(driver="postgresql"), min_size=0, max_size=1)
        poolwatch.instrument(apool, name="apg", registry=registry)
        apool.set_connect_args(pg.url(user=limited_role, password="pw", driver="postgresql"))
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await apool.fetchval("SELECT 1")
        assert sample(registry, "pool_connect_errors_total", "apg", reason="too_many_connections") == 1
        apool.terminate()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


@pytest.mark.destructive
def test_redis_maxclients_is_too_many_connections(redis_factory) -> None:
    server = redis_factory()
    admin = server.client()
    admin.config_set("maxclients", 1)  # the admin connection is the one
    registry = CollectorRegistry()
    client = redis.Redis(host=server.host, port=server.port, password=server.password)
    poolwatch.instrument_redis(client, name="max", registry=registry)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert sample(registry, "pool_connect_errors_total", "max", reason="too_many_connections") == 1
    admin.config_set("maxclients", 10000)
    admin.close()
