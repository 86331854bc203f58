"""Connect errors by reason for every PostgreSQL driver and Redis, from real servers refusing:
too_many_connections (SQLSTATE 53300, Redis maxclients), auth and refused; and a refused connect to
a host name with an IPv6 and an IPv4 address, which asyncio reports as one plain OSError."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import psycopg2
import psycopg2.pool
import psycopg_pool
import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import poolwatch
from poolwatch.errors import reason_of
from tests.daemonkit import wait_for
from tests.poolmetrics import sample
from tests.servers import free_port

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


def test_psycopg_pool_classifies_its_workers_connects(pg, limited_role) -> None:
    """psycopg_pool connects on its own worker threads (a caller only ever sees a timeout): the
    refused connects are counted there by reason, the caller's wait as a timeout."""
    registry = CollectorRegistry()
    pool = psycopg_pool.ConnectionPool(
        pg.dsn(user=limited_role, password="pw"), min_size=1, max_size=1, open=False
    )
    poolwatch.instrument(pool, name="pp", registry=registry)
    try:
        pool.open()
        wait_for(
            lambda: sample(registry, "pool_connect_errors_total", "pp", reason="too_many_connections") >= 1,
            what="a connect refused for the role's connection limit counted",
        )
        with pytest.raises(psycopg_pool.PoolTimeout):
            pool.getconn(timeout=0.1)
        assert sample(registry, "pool_timeouts_total", "pp") == 1
        assert sample(registry, "pool_connect_errors_total", "pp", reason="other") == 0
    finally:
        pool.close()


def test_an_async_psycopg_pool_classifies_its_workers_connects(pg, limited_role) -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        pool = psycopg_pool.AsyncConnectionPool(
            pg.dsn(user=limited_role, password="pw"), min_size=1, max_size=1, open=False
        )
        poolwatch.instrument(pool, name="app", registry=registry)
        try:
            await pool.open()
            for _ in range(2000):
                if sample(registry, "pool_connect_errors_total", "app", reason="too_many_connections"):
                    break
                await asyncio.sleep(0.01)
            assert sample(registry, "pool_connect_errors_total", "app", reason="too_many_connections") >= 1
            with pytest.raises(psycopg_pool.PoolTimeout):
                await pool.getconn(timeout=0.1)
            assert sample(registry, "pool_timeouts_total", "app") == 1
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


@pytest.mark.destructive
def test_redis_asyncio_maxclients_is_too_many_connections(redis_factory) -> None:
    server = redis_factory()
    admin = server.client()
    admin.config_set("maxclients", 1)  # the admin connection is the one

    async def body() -> None:
        registry = CollectorRegistry()
        client = redis.asyncio.Redis(host=server.host, port=server.port, password=server.password)
        poolwatch.instrument_redis(client, name="amax", registry=registry)
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        assert sample(registry, "pool_connect_errors_total", "amax", reason="too_many_connections") == 1
        await client.aclose()

    try:
        asyncio.run(asyncio.wait_for(body(), timeout=60))
    finally:
        admin.config_set("maxclients", 10000)
        admin.close()


class DualStackLoop(asyncio.SelectorEventLoop):
    """An event loop whose resolver gives ``dualstack.test`` an IPv6 and an IPv4 loopback address,
    as ``localhost`` resolves on many hosts (the one thing not real here: this machine's resolver)."""

    async def getaddrinfo(self, host: Any, port: Any, **kwargs: Any) -> Any:
        if host == "dualstack.test":
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
            ]
        return await super().getaddrinfo(host, port, **kwargs)


def test_a_refused_connect_to_every_address_of_a_name_is_refused() -> None:
    """Nothing listens on either address: asyncio raises OSError("Multiple exceptions: [Errno 111]
    Connect call failed ('::1', ...), [Errno 111] ...") from asyncpg and redis.asyncio alike."""
    import asyncpg

    port = free_port()

    async def body() -> None:
        registry = CollectorRegistry()
        apool = await asyncpg.create_pool(host="dualstack.test", port=port, user="x", min_size=0, max_size=1)
        poolwatch.instrument(apool, name="apg", registry=registry)
        with pytest.raises(OSError, match="Multiple exceptions"):
            await apool.fetchval("SELECT 1")
        assert sample(registry, "pool_connect_errors_total", "apg", reason="refused") == 1
        await apool.close()

        client = redis.asyncio.Redis(host="dualstack.test", port=port)
        poolwatch.instrument_redis(client, name="ar", registry=registry)
        with pytest.raises(redis.ConnectionError, match="Multiple exceptions"):
            await client.ping()
        assert sample(registry, "pool_connect_errors_total", "ar", reason="refused") == 1
        await client.aclose()

    loop = DualStackLoop()
    try:
        loop.run_until_complete(asyncio.wait_for(body(), timeout=60))
    finally:
        loop.close()


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg", "postgresql+asyncpg"])
@pytest.mark.parametrize("reason", ["dns", "timeout"])
def test_an_unknown_host_and_a_silent_server_are_dns_and_timeout(silent, driver, reason) -> None:
    registry = CollectorRegistry()
    host, port = ("no-such-host.invalid", 5432) if reason == "dns" else ("127.0.0.1", silent.port)
    url = f"{driver}://app:pw@{host}:{port}/postgres"
    timeout = {"timeout": 1} if driver.endswith("asyncpg") else {"connect_timeout": 1}
    if driver.endswith("asyncpg"):
        from sqlalchemy.ext.asyncio import create_async_engine

        async def attempt() -> None:
            engine = create_async_engine(url, poolclass=NullPool, connect_args=timeout)
            poolwatch.instrument(engine, name="down", registry=registry)
            with pytest.raises((DBAPIError, OSError, TimeoutError)):
                await engine.connect()
            await engine.dispose()

        asyncio.run(asyncio.wait_for(attempt(), timeout=60))
    else:
        engine = create_engine(url, poolclass=NullPool, connect_args=timeout)
        poolwatch.instrument(engine, name="down", registry=registry)
        with pytest.raises(DBAPIError):
            engine.connect()
    assert sample(registry, "pool_connect_errors_total", "down", reason=reason) == 1


@pytest.mark.parametrize("reason", ["dns", "timeout"])
def test_redis_clients_classify_an_unknown_host_and_a_silent_server(silent, reason) -> None:
    registry = CollectorRegistry()
    host, port = ("no-such-host.invalid", 6379) if reason == "dns" else ("127.0.0.1", silent.port)
    # One attempt, no retry: redis-py retries a connect three times by default.
    client = redis.Redis(
        host=host, port=port, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    poolwatch.instrument_redis(client, name="sync", registry=registry)
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        client.ping()
    assert sample(registry, "pool_connect_errors_total", "sync", reason=reason) == 1

    async def body() -> None:
        aclient = redis.asyncio.Redis(
            host=host,
            port=port,
            socket_connect_timeout=1,
            socket_timeout=1,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        poolwatch.instrument_redis(aclient, name="async", registry=registry)
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await aclient.ping()
        assert sample(registry, "pool_connect_errors_total", "async", reason=reason) == 1
        await aclient.aclose()

    asyncio.run(asyncio.wait_for(body(), timeout=60))
