"""poolwatch.instrument on real PostgreSQL: every pool metric moves as the workload says it must."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

import prometheus_client.registry
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

import poolwatch
from poolwatch.instrument import sqlalchemy as instrument_sqlalchemy
from tests.poolmetrics import FakeClock, sample
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy.engine import Engine

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_engine(pg: PostgresServer) -> Iterator[Callable[..., tuple[Engine, str]]]:
    """Engines with a unique application_name each, disposed after the test."""
    engines: list[Engine] = []

    def make(**options: object) -> tuple[Engine, str]:
        app = f"pw-test-{uuid.uuid4().hex[:8]}"
        connect_args = {"application_name": app, "connect_timeout": 5}
        engine = create_engine(pg.url(), connect_args=connect_args, **options)
        engines.append(engine)
        return engine, app

    yield make
    for engine in engines:
        engine.dispose()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_checkouts_sizes_and_histograms_follow_the_workload(make_engine, registry) -> None:
    engine, _ = make_engine(pool_size=2, max_overflow=1)
    poolwatch.instrument(engine, name="orders", registry=registry)
    assert sample(registry, "pool_max_connections", "orders") == 3
    assert sample(registry, "pool_size", "orders") == 2
    first, second = engine.connect(), engine.connect()
    assert sample(registry, "pool_connections", "orders", state="used") == 2
    assert sample(registry, "pool_connections", "orders", state="idle") == 0
    assert sample(registry, "pool_checkouts_total", "orders") == 2
    assert sample(registry, "pool_create_seconds_count", "orders") == 2
    first.close()
    second.close()
    assert sample(registry, "pool_connections", "orders", state="used") == 0
    assert sample(registry, "pool_connections", "orders", state="idle") == 2
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert sample(registry, "pool_checkouts_total", "orders") == 3
    assert sample(registry, "pool_wait_seconds_count", "orders") == 3
    assert sample(registry, "pool_use_seconds_count", "orders") == 3
    assert sample(registry, "pool_create_seconds_count", "orders") == 2
    assert sample(registry, "pool_wait_seconds_bucket", "orders", le="30.0") == 3
    assert sample(registry, "pool_overflow", "orders") == 0
    assert sample(registry, "pool_pending_requests", "orders") == 0


def test_overflow_gauge_and_overflow_close_on_checkin(make_engine, registry) -> None:
    engine, _ = make_engine(pool_size=1, max_overflow=2)
    ledger = poolwatch.instrument(engine, name="o", registry=registry).recorder.ledger
    held = [engine.connect() for _ in range(3)]
    assert sample(registry, "pool_overflow", "o") == 2
    assert len(ledger.checked_out) == 3
    for connection in held:
        connection.close()
    assert sample(registry, "pool_overflow", "o") == 0
    assert sample(registry, "pool_closed_total", "o", reason="overflow") == 2
    assert sample(registry, "pool_connections", "o", state="idle") == 1
    # Connections closed for good are forgotten: the one idle connection is all poolwatch keeps.
    assert ledger.checked_out == {}
    assert len(ledger.idle_since) == 1


def test_exhausted_pool_shows_pending_callers_and_counts_each_timeout(make_engine, registry) -> None:
    engine, _ = make_engine(pool_size=1, max_overflow=0, pool_timeout=1.0)
    poolwatch.instrument(engine, name="busy", registry=registry)
    holder = engine.connect()
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            with engine.connect():
                pass
        except PoolTimeoutError as exc:
            errors.append(exc)

    callers = [threading.Thread(target=caller) for _ in range(2)]
    for thread in callers:
        thread.start()
    wait_until(lambda: sample(registry, "pool_pending_requests", "busy") == 2)
    for thread in callers:
        thread.join()
    holder.close()
    assert len(errors) == 2
    assert sample(registry, "pool_timeouts_total", "busy") == 2
    # The two timed-out checkouts waited a second each: the wait histogram (and its alert) sees them.
    assert sample(registry, "pool_wait_seconds_count", "busy") == 3
    assert sample(registry, "pool_wait_seconds_bucket", "busy", le="0.5") == 1
    assert sample(registry, "pool_pending_requests", "busy") == 0
    assert sample(registry, "pool_checkouts_total", "busy") == 1
    for reason in ("auth", "refused", "other"):
        assert sample(registry, "pool_connect_errors_total", "busy", reason=reason) == 0


def test_leak_gauge_rises_past_threshold_and_falls_when_returned(make_engine, registry, caplog) -> None:
    clock = FakeClock()
    engine, _ = make_engine(pool_size=2)
    poolwatch.instrument(engine, name="leaky", registry=registry, leak_threshold=30, clock=clock)
    caplog.set_level(logging.INFO, logger="poolwatch.instrument")
    connection = engine.connect()  # the stack must show this line's function
    clock.advance(29)
    assert sample(registry, "pool_leaked_connections", "leaky") == 0
    clock.advance(2)
    assert sample(registry, "pool_leaked_connections", "leaky") == 1
    assert sample(registry, "pool_leaks_total", "leaky") == 1
    assert sample(registry, "pool_leaks_total", "leaky") == 1  # warned and counted once
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "test_leak_gauge_rises_past_threshold_and_falls_when_returned" in warnings[0].getMessage()
    connection.close()
    assert sample(registry, "pool_leaked_connections", "leaky") == 0
    assert sample(registry, "pool_leaks_total", "leaky") == 1
    assert any("leaked connection returned after 31.0s" in r.getMessage() for r in caplog.records)


def test_leak_warning_shows_where_the_holding_thread_is_now(make_engine, registry, caplog) -> None:
    clock = FakeClock()
    engine, _ = make_engine(pool_size=2)
    poolwatch.instrument(engine, name="held", registry=registry, leak_threshold=30, clock=clock)
    caplog.set_level(logging.WARNING, logger="poolwatch.instrument")
    holding, release = threading.Event(), threading.Event()

    def slow_job() -> None:
        with engine.connect():  # checked out here
            holding.set()
            release.wait(30)  # the holder is stuck here when the leak is reported

    worker = threading.Thread(target=slow_job, name="slow-job")
    worker.start()
    try:
        assert holding.wait(30)
        clock.advance(31)
        assert sample(registry, "pool_leaked_connections", "held") == 1
    finally:
        release.set()
        worker.join(30)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    checkout, now = warning.split("thread 'slow-job', which checked it out, is now at:")
    assert "in slow_job" in checkout
    assert "with engine.connect():  # checked out here" in checkout
    assert "in slow_job\n    release.wait(30)  # the holder is stuck here when the leak is reported" in now


def _checked_out_at(caplog: pytest.LogCaptureFixture) -> str:
    """The "checked out at" frame of the one leak warning logged (as traceback prints a frame)."""
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return warning.partition("checked out at:\n")[2].partition("\n  thread ")[0]


@pytest.mark.parametrize("hold", ["connection", "transaction", "engine.begin"])
def test_leak_through_an_orm_session_names_the_application_line(make_engine, registry, caplog, hold) -> None:
    clock = FakeClock()
    engine, _ = make_engine(pool_size=2)
    poolwatch.instrument(engine, name="orm", registry=registry, leak_threshold=30, clock=clock)
    caplog.set_level(logging.WARNING, logger="poolwatch.instrument")
    if hold == "engine.begin":
        with engine.begin():  # the application's checkout
            clock.advance(31)
            assert sample(registry, "pool_leaked_connections", "orm") == 1
    with Session(engine) as session:
        if hold == "connection":
            session.connection()  # the application's checkout
        elif hold == "transaction":
            session.execute(text("SELECT 1"))  # the application's checkout
        clock.advance(31)
        assert sample(registry, "pool_leaked_connections", "orm") == int(hold != "engine.begin")
    checkout = _checked_out_at(caplog)
    assert checkout.startswith(f'  File "{__file__}", line '), checkout
    assert "in test_leak_through_an_orm_session_names_the_application_line" in checkout
    assert "# the application's checkout" in checkout
    assert checkout.count("  File ") == 1, checkout  # that frame only, none of SQLAlchemy's


def test_pre_ping_closes_a_connection_whose_backend_was_killed(pg, make_engine, registry) -> None:
    engine, app = make_engine(pool_size=2, pool_pre_ping=True)
    poolwatch.instrument(engine, name="pinged", registry=registry)
    with engine.connect():
        pass
    assert pg.terminate(app) == 1
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    assert sample(registry, "pool_closed_total", "pinged", reason="pre_ping_failed") == 1
    assert sample(registry, "pool_checkouts_total", "pinged") == 2


def test_invalidation_and_recycle_are_counted_by_reason(make_engine, registry) -> None:
    engine, _ = make_engine(pool_size=2, pool_recycle=1)
    poolwatch.instrument(engine, name="r", registry=registry)
    with engine.connect() as connection:
        connection.invalidate()
    assert sample(registry, "pool_closed_total", "r", reason="invalidated") == 1
    # Closed while checked out, it still counts its use time when it comes back.
    assert sample(registry, "pool_use_seconds_count", "r") == 1
    with engine.connect():
        pass
    time.sleep(1.1)  # pool_recycle is compared with time.time() inside SQLAlchemy
    with engine.connect():
        pass
    assert sample(registry, "pool_closed_total", "r", reason="recycled") == 1


def test_wrong_password_counts_an_auth_connect_error(pg, registry) -> None:
    engine = create_engine(pg.url(password="wrong-" + uuid.uuid4().hex), pool_size=1)
    poolwatch.instrument(engine, name="auth", registry=registry)
    with pytest.raises(OperationalError):
        engine.connect()
    assert sample(registry, "pool_connect_errors_total", "auth", reason="auth") == 1
    assert sample(registry, "pool_checkouts_total", "auth") == 0
    assert sample(registry, "pool_pending_requests", "auth") == 0
    engine.dispose()


def test_refused_connection_counts_a_refused_connect_error(registry) -> None:
    engine = create_engine(f"postgresql+psycopg2://u:p@127.0.0.1:{free_port()}/db", pool_size=1)
    poolwatch.instrument(engine, name="down", registry=registry)
    for _ in range(2):
        with pytest.raises(OperationalError):
            engine.connect()
    assert sample(registry, "pool_connect_errors_total", "down", reason="refused") == 2
    assert sample(registry, "pool_timeouts_total", "down") == 0


def test_many_threads_counts_add_up_exactly(make_engine, registry) -> None:
    engine, _ = make_engine(pool_size=4, max_overflow=4, pool_timeout=30)
    poolwatch.instrument(engine, name="conc", registry=registry, leak_threshold=60)
    threads, per_thread = 12, 150
    scrapes = threading.Event()

    def scraper() -> None:  # scraping while the hot path runs must not lose or double anything
        while not scrapes.is_set():
            sample(registry, "pool_checkouts_total", "conc")

    def work() -> None:
        for _ in range(per_thread):
            with engine.connect():
                pass

    background = threading.Thread(target=scraper)
    background.start()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    scrapes.set()
    background.join()
    total = threads * per_thread
    assert sample(registry, "pool_checkouts_total", "conc") == total
    assert sample(registry, "pool_wait_seconds_count", "conc") == total
    assert sample(registry, "pool_use_seconds_count", "conc") == total
    assert sample(registry, "pool_connections", "conc", state="used") == 0
    assert sample(registry, "pool_pending_requests", "conc") == 0
    assert sample(registry, "pool_leaked_connections", "conc") == 0
    assert sample(registry, "instrumentation_errors_total", "conc") == 0


def test_instrumentation_survives_dispose(make_engine, registry) -> None:
    engine, _ = make_engine(pool_size=2)
    poolwatch.instrument(engine, name="d", registry=registry)
    with engine.connect():
        pass
    old_pool = engine.pool
    engine.dispose()
    assert engine.pool is not old_pool
    assert sample(registry, "pool_closed_total", "d", reason="dispose") == 1
    with engine.connect():
        pass
    assert sample(registry, "pool_checkouts_total", "d") == 2
    assert sample(registry, "pool_connections", "d", state="idle") == 1
    # SQLAlchemy's pool logger keeps its name after the class swap.
    assert engine.pool.logger.name.startswith("sqlalchemy.pool")


def test_same_name_twice_on_one_registry_is_an_error(make_engine, registry) -> None:
    first, _ = make_engine()
    second, _ = make_engine()
    poolwatch.instrument(first, name="dup", registry=registry)
    with pytest.raises(ValueError, match="already instrumented on this registry"):
        poolwatch.instrument(second, name="dup", registry=registry)
    with pytest.raises(ValueError, match="already instrumented"):
        poolwatch.instrument(first, name="other", registry=registry)
    poolwatch.instrument(second, name="dup", registry=CollectorRegistry())  # another registry is fine


def test_removed_instrumentation_frees_the_name(make_engine, registry) -> None:
    engine, _ = make_engine()
    handle = poolwatch.instrument(engine, name="gone", registry=registry)
    handle.remove()
    assert registry.get_sample_value("poolwatch_pool_size", {"pool": "gone"}) is None
    other, _ = make_engine()
    poolwatch.instrument(other, name="gone", registry=registry)
    assert sample(registry, "pool_size", "gone") == 5


def test_registry_none_means_the_default_registry_at_call_time(make_engine, monkeypatch) -> None:
    fresh = CollectorRegistry()
    monkeypatch.setattr(prometheus_client.registry, "REGISTRY", fresh)
    engine, _ = make_engine()
    poolwatch.instrument(engine, name="global")
    assert sample(fresh, "pool_size", "global") == 5


def test_a_pool_without_metrics_is_refused_with_a_clear_error(pg, registry) -> None:
    engine = create_engine(pg.url(), poolclass=StaticPool)
    with pytest.raises(TypeError, match="not a QueuePool"):
        poolwatch.instrument(engine, name="null", registry=registry)


def test_failing_hook_is_counted_never_raised(make_engine, registry, monkeypatch, caplog) -> None:
    def broken(_record: object) -> float:
        raise RuntimeError("poolwatch bug")

    monkeypatch.setattr(instrument_sqlalchemy, "connected_at", broken)
    engine, _ = make_engine(pool_size=1, max_overflow=2)
    poolwatch.instrument(engine, name="bug", registry=registry)
    held = [engine.connect() for _ in range(2)]
    for connection in held:
        assert connection.execute(text("SELECT 1")).scalar() == 1
        connection.close()
    assert sample(registry, "instrumentation_errors_total", "bug") >= 2
    assert sum("instrumentation hook failed" in r.getMessage() for r in caplog.records) == 1
    assert sample(registry, "pool_checkouts_total", "bug") == 2


def test_async_engine_is_instrumented(pg, registry) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(pg.url(driver="postgresql+asyncpg"), pool_size=2)
    poolwatch.instrument(engine, name="aio", registry=registry)

    async def workload() -> None:
        for _ in range(3):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        await engine.dispose()
        async with engine.connect():
            pass
        await engine.dispose()

    asyncio.run(workload())
    assert sample(registry, "pool_checkouts_total", "aio") == 4
    assert sample(registry, "pool_use_seconds_count", "aio") == 4
    assert sample(registry, "pool_closed_total", "aio", reason="dispose") == 2


def test_a_disposed_pool_is_still_garbage_collected(pg, make_engine, registry) -> None:
    import gc
    import weakref

    engine, app = make_engine(pool_size=2)
    poolwatch.instrument(engine, name="gc", registry=registry)
    held = engine.connect()
    old_pool = weakref.ref(engine.pool)
    engine.dispose()
    held.close()  # returned to the old pool, which nothing else refers to any more
    del held
    gc.collect()
    assert old_pool() is None
    wait_until(lambda: pg.backends(app) == [])  # its connection was closed with it
