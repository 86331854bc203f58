"""poolwatch.instrument on SQLAlchemy engines on MariaDB (PyMySQL), in an application's process:
exact counts under threads, exhaustion, a server restart, and connect errors by reason through
``pool_connect_errors_total`` (MySQL 1040, too many connections; 1045, access denied; refused)."""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import QueuePool

import poolwatch
from tests.daemonkit import wait_for
from tests.poolmetrics import sample, waits

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from tests.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def errors(registry: CollectorRegistry, name: str) -> float:
    return sample(registry, "instrumentation_errors_total", name)


def test_threads_are_counted_exactly_and_exhaustion_is_seen(mariadb: MariaDBServer) -> None:
    registry = CollectorRegistry()
    engine = create_engine(mariadb.url(), pool_size=2, max_overflow=1, pool_timeout=30)
    poolwatch.instrument(engine, name="my", registry=registry, leak_threshold=60)
    try:

        def work() -> None:
            for _ in range(40):
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))

        threads = [threading.Thread(target=work) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sample(registry, "pool_checkouts_total", "my") == 240
        assert sample(registry, "pool_use_seconds_count", "my") == 240
        assert sample(registry, "pool_connections", "my", state="used") == 0
        assert sample(registry, "pool_pending_requests", "my") == 0
        assert sample(registry, "pool_max_connections", "my") == 3
        assert mariadb.url().split("@")[1].split("/")[0] in sample_server(registry, "my")

        held = [engine.connect() for _ in range(3)]
        got: list[Connection] = []
        waiter = threading.Thread(target=lambda: got.append(engine.connect()))  # waits up to 30 s
        waiter.start()
        wait_for(lambda: sample(registry, "pool_pending_requests", "my") == 1, what="one caller pending")
        held.pop().close()  # the waiter gets it
        waiter.join()
        held.extend(got)
        assert sample(registry, "pool_checkouts_total", "my") == 244
        queue = engine.pool
        assert isinstance(queue, QueuePool)
        queue._timeout = 0.3  # the next checkout waits this long at most
        count, total = waits(registry, "my")
        with pytest.raises(PoolTimeoutError):
            engine.connect()
        assert sample(registry, "pool_timeouts_total", "my") == 1
        after_count, after_total = waits(registry, "my")
        assert (after_count, after_total - total >= 0.3) == (count + 1, True)
        assert sample(registry, "pool_pending_requests", "my") == 0
        for connection in held:
            connection.close()
        assert errors(registry, "my") == 0
    finally:
        engine.dispose()


def sample_server(registry: CollectorRegistry, name: str) -> str:
    """The ``server`` label of the pool's series."""
    for family in registry.collect():
        for each in family.samples:
            if each.name == "poolwatch_pool_checkouts_total" and each.labels.get("pool") == name:
                return each.labels["server"]
    raise AssertionError(f"no series of pool {name}")


@pytest.mark.destructive
def test_connect_errors_are_counted_by_reason(mariadb_factory) -> None:
    server = mariadb_factory(max_connections=10)  # MariaDB's smallest
    user = f"app_{uuid.uuid4().hex[:6]}"
    server.create_user(user, "pw", "USAGE ON *.*")
    registry = CollectorRegistry()
    engine = create_engine(server.url(user=user, password="pw", database=""), pool_size=1, max_overflow=0)
    poolwatch.instrument(engine, name="my", registry=registry)
    wrong = create_engine(server.url(user=user, password="wrong", database=""), pool_size=1)
    poolwatch.instrument(wrong, name="wrong", registry=registry)
    held = [server.connect(user, "pw") for _ in range(10)]
    try:
        with pytest.raises(OperationalError, match="1040"):
            engine.connect()
        assert sample(registry, "pool_connect_errors_total", "my", reason="too_many_connections") == 1
    finally:
        for connection in held:
            connection.close()
    with pytest.raises(OperationalError, match="1045"):
        wrong.connect()
    assert sample(registry, "pool_connect_errors_total", "wrong", reason="auth") == 1
    with engine.connect() as connection:  # room again
        assert connection.execute(text("SELECT 1")).scalar() == 1
    server.stop()
    engine.dispose()
    with pytest.raises(OperationalError):
        engine.connect()
    assert sample(registry, "pool_connect_errors_total", "my", reason="refused") == 1
    server.start()
    with engine.connect() as connection:  # the server back: the pool recovers
        assert connection.execute(text("SELECT 1")).scalar() == 1
    assert sample(registry, "pool_checkouts_total", "my") == 2
    assert errors(registry, "my") == 0
    wrong.dispose()
    engine.dispose()
