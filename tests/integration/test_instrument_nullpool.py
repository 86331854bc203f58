"""poolwatch.instrument on NullPool engines (psycopg2, psycopg 3, asyncpg) against a real PostgreSQL:
open connections, connects, connect time and connect errors by reason."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import poolwatch
from tests.daemonkit import wait_for
from tests.integration.test_instrument_psycopg_pool import errors
from tests.poolmetrics import sample
from tests.servers import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg"])
def test_connects_are_counted_exactly_under_threads(pg, driver) -> None:
    registry = CollectorRegistry()
    engine = create_engine(pg.url(driver=driver), poolclass=NullPool)
    poolwatch.instrument(engine, name="np", registry=registry)

    def work() -> None:
        for _ in range(10):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sample(registry, "pool_checkouts_total", "np") == 40
    assert sample(registry, "pool_create_seconds_count", "np") == 40
    assert sample(registry, "pool_use_seconds_count", "np") == 40
    assert sample(registry, "pool_pending_requests", "np") == 0
    with engine.connect():
        assert sample(registry, "pool_connections", "np", state="used") == 1
    assert sample(registry, "pool_connections", "np", state="used") == 0
    assert sample(registry, "pool_max_connections", "np") == float("inf")
    held = engine.connect()
    engine.dispose()  # a new NullPool: still instrumented
    with engine.connect():
        # The connection the old pool handed out is still open: both count.
        assert sample(registry, "pool_connections", "np", state="used") == 2
    assert sample(registry, "pool_connections", "np", state="used") == 1
    held.close()
    assert sample(registry, "pool_connections", "np", state="used") == 0
    assert sample(registry, "pool_checkouts_total", "np") == 43
    assert sample(registry, "pool_use_seconds_count", "np") == 43
    assert errors(registry, "np") == 0


@pytest.mark.destructive
def test_a_server_restart_and_a_dropped_connection(pg_factory) -> None:
    """Behind a pooler that restarts: refused connects counted while it is down, connections again
    when it is back; a connection the application drops is closed by the garbage collector and
    leaves the count of open ones."""
    server = pg_factory()
    registry = CollectorRegistry()
    app = "pw-nullpool-rs"
    engine = create_engine(server.url(), poolclass=NullPool, connect_args={"application_name": app})
    poolwatch.instrument(engine, name="rs", registry=registry, leak_threshold=0.001)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    server.stop()
    with pytest.raises(OperationalError):
        engine.connect()
    assert sample(registry, "pool_connect_errors_total", "rs", reason="refused") == 1
    server.start()

    def drop() -> None:
        dropped = engine.connect()
        dropped.execute(text("SELECT 1"))  # never closed: dropped with this frame

    drop()
    gc.collect()
    assert sample(registry, "pool_connections", "rs", state="used") == 0
    assert sample(registry, "pool_checkouts_total", "rs") == 2
    assert sample(registry, "pool_use_seconds_count", "rs") == 2
    wait_for(lambda: server.backends(app) == [], what="the dropped connection closed on the server")
    assert errors(registry, "rs") == 0
    engine.dispose()


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg"])
def test_connect_errors_are_classified(pg, driver) -> None:
    registry = CollectorRegistry()
    refused = create_engine(f"{driver}://u:p@127.0.0.1:{free_port()}/db", poolclass=NullPool)
    wrong = create_engine(pg.url(driver=driver, password="wrong-password"), poolclass=NullPool)
    poolwatch.instrument(refused, name="refused", registry=registry)
    poolwatch.instrument(wrong, name="auth", registry=registry)
    for engine in (refused, wrong):
        with pytest.raises(OperationalError):
            engine.connect()
    assert sample(registry, "pool_connect_errors_total", "refused", reason="refused") == 1
    assert sample(registry, "pool_connect_errors_total", "auth", reason="auth") == 1
    assert errors(registry, "refused") == errors(registry, "auth") == 0


def test_an_async_engine_on_nullpool(pg) -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        engine = create_async_engine(pg.url(driver="postgresql+asyncpg"), poolclass=NullPool)
        poolwatch.instrument(engine, name="anp", registry=registry)

        async def work() -> None:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        await asyncio.gather(*(work() for _ in range(5)))
        assert sample(registry, "pool_checkouts_total", "anp") == 5
        assert sample(registry, "pool_create_seconds_count", "anp") == 5
        assert sample(registry, "pool_connections", "anp", state="used") == 0
        assert errors(registry, "anp") == 0
        await engine.dispose()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


def test_the_daemon_takes_a_psycopg_3_target(pg) -> None:
    from poolwatch.config import validate
    from poolwatch.database import create_target_engine, select_one

    settings = validate(
        {"targets": [{"name": "pg3", "kind": "postgres", "url": pg.url(driver="postgresql+psycopg")}]}
    )
    engine = create_target_engine(settings.targets[0])
    assert engine.dialect.driver == "psycopg"
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="pg3", registry=registry)
    select_one(engine)
    assert sample(registry, "pool_checkouts_total", "pg3") == 1
    engine.dispose()
