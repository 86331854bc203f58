"""Fixtures shared by every test: real servers (session-scoped), and factories for tests that break
their own. ``POOLWATCH_TEST_PG_URL`` / ``POOLWATCH_TEST_REDIS_URL`` point the non-destructive tests
at existing servers instead; destructive tests are then skipped."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import pytest

from tests.mariadb import MariaDBServer
from tests.pgbouncer import PgBouncerServer
from tests.servers import ExternalPostgres, ExternalRedis, PostgresServer, RedisServer, SilentServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

EXTERNAL_PG = os.environ.get("POOLWATCH_TEST_PG_URL")
EXTERNAL_REDIS = os.environ.get("POOLWATCH_TEST_REDIS_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not (EXTERNAL_PG or EXTERNAL_REDIS):
        return
    skip = pytest.mark.skip(reason="destructive: not run against POOLWATCH_TEST_* servers")
    for item in items:
        if "destructive" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the session. Tests must leave it running."""
    if EXTERNAL_PG:
        yield ExternalPostgres(EXTERNAL_PG)
        return
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis server shared by the session. Tests must leave it running."""
    if EXTERNAL_REDIS:
        yield ExternalRedis(EXTERNAL_REDIS)
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., PostgresServer]]:
    """Start private PostgreSQL servers a test may stop, kill and restart; ``settings`` are server
    settings on top of the usual ones (``max_connections``...)."""
    servers: list[PostgresServer] = []

    def make(settings: Mapping[str, object] | None = None) -> PostgresServer:
        server = PostgresServer(settings=settings).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.destroy()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private Redis servers a test may stop, kill and restart."""
    servers: list[RedisServer] = []

    def make(password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", password=password).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """A MariaDB server shared by the session (performance_schema off, as MariaDB ships). Tests must
    leave it running."""
    server = MariaDBServer().start()
    yield server
    server.destroy()


@pytest.fixture
def mariadb_factory() -> Iterator[Callable[..., MariaDBServer]]:
    """Start private MariaDB servers a test may stop, kill and restart (options go to MariaDBServer)."""
    servers: list[MariaDBServer] = []

    def make(**options: Any) -> MariaDBServer:
        server = MariaDBServer(**options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.destroy()


@pytest.fixture
def pgbouncer_factory(pg: PostgresServer) -> Iterator[Callable[..., PgBouncerServer]]:
    """Start private PgBouncers in front of the session's PostgreSQL, each with its own client role."""
    bouncers: list[PgBouncerServer] = []

    def make(pool_size: int = 2) -> PgBouncerServer:
        user = f"bouncer_app_{len(bouncers)}_{os.getpid()}"
        if not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)):
            pg.create_role(user, "pw")
        bouncer = PgBouncerServer(pg, user, "pw", pool_size=pool_size).start()
        bouncers.append(bouncer)
        return bouncer

    yield make
    for bouncer in bouncers:
        bouncer.destroy()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    """A TCP server that accepts connections and never answers."""
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """The CLI run in process (``poolwatch check``, ``config``) sets up logging as the command does:
    its own root handler and level (ERROR). Put the root logger back after each test, so a later
    test's log capture sees what it should."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
