"""Who holds the connections, against real PostgreSQL and Redis: routes of real FastAPI, Starlette and
Flask applications and named jobs label the use-time histogram and the leak counts."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import poolwatch
from tests.poolmetrics import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine
    from starlette.requests import Request

    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(pg: PostgresServer) -> Iterator[Engine]:
    engine = create_engine(pg.url(), pool_size=2, max_overflow=0, connect_args={"connect_timeout": 5})
    yield engine
    engine.dispose()


def by_holder(registry: CollectorRegistry, name: str, pool: str = "app") -> dict[str, float]:
    return {
        s.labels["holder"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == f"poolwatch_{name}" and s.labels["pool"] == pool
    }


def test_fastapi_routes_hold_connections_under_their_template(engine, caplog) -> None:
    registry, clock = CollectorRegistry(), FakeClock()
    poolwatch.instrument(engine, name="app", registry=registry, leak_threshold=5, clock=clock)
    app = FastAPI()
    app.add_middleware(poolwatch.HolderMiddleware)

    @app.get("/orders/{order_id}")
    def order(order_id: int) -> dict[str, int]:  # a plain def: FastAPI runs it on a worker thread
        with engine.connect() as connection:
            return {"id": connection.execute(text("SELECT :id"), {"id": order_id}).scalar_one()}

    @app.get("/reports/slow")
    async def slow() -> dict[str, str]:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            clock.advance(6)  # held past leak_threshold, returned before any scrape
        return {"ok": "yes"}

    with TestClient(app) as client:
        for order_id in (1, 2, 3):
            assert client.get(f"/orders/{order_id}").json() == {"id": order_id}
        assert client.get("/reports/slow").status_code == 200
    uses = by_holder(registry, "pool_use_seconds_count")
    assert uses == {"": 0, "GET /orders/{order_id}": 3, "GET /reports/slow": 1}
    assert by_holder(registry, "pool_leaks_total") == {"": 0, "GET /reports/slow": 1}
    leak_warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "held for" in r.getMessage()
    ]
    assert len(leak_warnings) == 1
    assert "by GET /reports/slow" in leak_warnings[0]


def test_starlette_routes_and_unrouted_requests(engine) -> None:
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="app", registry=registry)

    async def user(request: Request) -> PlainTextResponse:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return PlainTextResponse(request.path_params["name"])

    app = Starlette(routes=[Route("/users/{name}", user)])
    app.add_middleware(poolwatch.HolderMiddleware)
    with TestClient(app) as client:
        assert client.get("/users/ada").text == "ada"
        assert client.get("/users/bob").text == "bob"
        assert client.get("/nowhere").status_code == 404
    assert by_holder(registry, "pool_use_seconds_count") == {"": 0, "GET /users/{name}": 2}


def test_a_connection_used_outside_any_request_has_no_holder(engine) -> None:
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="app", registry=registry)
    app = FastAPI()
    app.add_middleware(poolwatch.HolderMiddleware)

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    with TestClient(app) as client:
        client.get("/ping")
        with engine.connect():
            pass
    assert by_holder(registry, "pool_use_seconds_count") == {"": 1}


def test_flask_routes_hold_connections_under_their_rule(engine) -> None:
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="app", registry=registry)
    app = Flask(__name__)
    app.wsgi_app = poolwatch.WSGIHolderMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        with engine.connect() as connection:
            return str(connection.execute(text("SELECT :id"), {"id": order_id}).scalar_one())

    client = app.test_client()
    assert client.get("/orders/7").text == "7"
    assert client.get("/orders/8").text == "8"
    assert by_holder(registry, "pool_use_seconds_count") == {"": 0, "GET /orders/<int:order_id>": 2}


def test_a_plain_wsgi_application_is_labelled_by_its_first_path_segment(engine) -> None:
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="app", registry=registry)

    def application(environ: dict[str, object], start_response: object) -> list[bytes]:
        with engine.connect():
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b"ok"]

    wrapped = poolwatch.WSGIHolderMiddleware(application)
    for path in ("/reports/2026/11", "/reports/2026/12", "/health"):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
        assert list(wrapped(environ, lambda *_: None)) == [b"ok"]
    assert by_holder(registry, "pool_use_seconds_count") == {"": 0, "GET /reports/*": 2, "GET /health": 1}


def test_jobs_beyond_the_label_limit_are_other(engine) -> None:
    registry = CollectorRegistry()
    instrumentation = poolwatch.instrument(engine, name="app", registry=registry)
    limit = instrumentation.recorder.by_holder.labels.limit
    for index in range(limit + 1):
        with poolwatch.holder(f"job-{index:02d}"), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        list(registry.collect())  # each job seen in a scrape of its own: the first `limit` keep theirs
    uses = by_holder(registry, "pool_use_seconds_count")
    assert len(uses) == limit + 2  # "", `limit` jobs, other
    assert uses["other"] == 1
    assert f"job-{limit:02d}" not in uses


def test_redis_connections_are_held_by_the_current_holder(redis_server: RedisServer) -> None:
    registry = CollectorRegistry()
    client = redis_server.client()
    poolwatch.instrument_redis(client, name="cache", registry=registry)
    with poolwatch.holder("cache-warmer"):
        client.set("k", "v")
        assert client.get("k") == b"v"
    client.ping()
    assert by_holder(registry, "pool_use_seconds_count", pool="cache") == {"": 1, "cache-warmer": 2}


def test_async_engine_checkouts_are_held_by_the_task_holder(pg: PostgresServer) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    registry = CollectorRegistry()
    engine = create_async_engine(pg.url(driver="postgresql+asyncpg"), pool_size=2)
    poolwatch.instrument(engine, name="app", registry=registry)

    @poolwatch.holder("async-job")
    async def job() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def main() -> None:
        await asyncio.gather(job(), job())
        async with engine.connect() as connection:  # no holder here
            await connection.execute(text("SELECT 1"))
        await engine.dispose()

    asyncio.run(main())
    assert by_holder(registry, "pool_use_seconds_count") == {"": 1, "async-job": 2}


def test_redis_leak_returned_before_a_scrape_is_counted_at_checkin(redis_server: RedisServer, caplog) -> None:
    registry, clock = CollectorRegistry(), FakeClock()
    client = redis_server.client()
    poolwatch.instrument_redis(client, name="cache", registry=registry, leak_threshold=5, clock=clock)
    with poolwatch.holder("slow-export"):
        pubsub = client.pubsub()
        pubsub.subscribe("exports")  # takes a connection until closed
        clock.advance(6)  # held past leak_threshold, returned before any scrape
        pubsub.close()
    assert by_holder(registry, "pool_leaks_total", pool="cache") == {"": 0, "slow-export": 1}
    assert any("by slow-export" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("kind", ["psycopg2.pool", "psycopg_pool"])
def test_a_holder_named_after_a_pool_was_instrumented_holds_its_connections(
    pg: PostgresServer, kind: str
) -> None:
    import psycopg2.pool
    import psycopg_pool

    from poolwatch.instrument import holder as holder_module

    holder_module.named[0] = False  # as in a process that never named a holder
    try:
        registry = CollectorRegistry()
        if kind == "psycopg2.pool":
            pool: Any = psycopg2.pool.ThreadedConnectionPool(1, 2, pg.dsn())
            close = pool.closeall
        else:
            pool = psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=2, open=True)
            close = pool.close
        poolwatch.instrument(pool, name="app", registry=registry)
        pool.putconn(pool.getconn())
        with poolwatch.holder("nightly-report"):
            pool.putconn(pool.getconn())
        pool.putconn(pool.getconn())
        assert by_holder(registry, "pool_use_seconds_count") == {"": 2.0, "nightly-report": 1.0}
        close()
    finally:
        holder_module.named[0] = True  # always safe: the hooks then read the context variable
