"""SQLAlchemy pools on SQLite: instrumentation leaves no trace in the application's objects, keeps
nothing alive, raises nothing into the application and fails before changing anything."""

from __future__ import annotations

import gc
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import QueuePool, StaticPool

import poolwatch
from poolwatch.housekeeping import Housekeeper, HousekeepingPolicy
from tests.poolmetrics import sample

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sqlalchemy.engine import Engine


class Creator:
    """A sqlite3 connect function that fails while ``failing`` is set (a database gone away)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.failing = False

    def __call__(self) -> sqlite3.Connection:
        if self.failing:
            raise sqlite3.OperationalError("unable to open database file")
        return sqlite3.connect(self.path, check_same_thread=False)


@pytest.fixture
def creator(tmp_path: Path) -> Creator:
    return Creator(tmp_path / "app.db")


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def make_engine(engines: list[Engine], creator: Creator, **options: Any) -> Engine:
    engine = create_engine("sqlite://", creator=creator, poolclass=QueuePool, **options)
    engines.append(engine)
    return engine


def errors(registry: CollectorRegistry, pool: str) -> float:
    return sample(registry, "instrumentation_errors_total", pool)


def test_connection_info_is_left_to_the_application(engines, creator) -> None:
    registry = CollectorRegistry()
    engine = make_engine(engines, creator, pool_size=2)
    instrumentation = poolwatch.instrument(engine, name="info", registry=registry, leak_threshold=60)
    keeper = Housekeeper(instrumentation, HousekeepingPolicy(max_lifetime=3600, keepalive=0.0))
    with engine.connect() as connection:
        assert connection.info == {}
        connection.connection.invalidate(soft=True)  # a soft invalidation tags the close reason
        assert connection.info == {}
    keeper.run_once()  # pings the idle connection (keepalive 0), reads its lifetime jitter
    with engine.connect() as connection:
        assert connection.info == {}
        assert connection.connection._connection_record.info == {}
        assert connection.connection._connection_record.record_info == {}
    assert sample(registry, "pool_closed_total", "info", reason="invalidated") == 1
    assert errors(registry, "info") == 0


def test_the_pool_keeps_its_class_and_methods_patched_later_are_called(engines, creator) -> None:
    registry = CollectorRegistry()
    engine = make_engine(engines, creator, pool_size=2)
    pool = engine.pool
    poolwatch.instrument(engine, name="same", registry=registry)
    assert type(pool) is QueuePool
    calls: list[str] = []
    original = QueuePool._do_return_conn

    def patched(self: QueuePool, record: Any) -> None:
        calls.append("returned")
        original(self, record)

    QueuePool._do_return_conn = patched  # type: ignore[method-assign]
    try:
        with engine.connect():
            pass
    finally:
        QueuePool._do_return_conn = original  # type: ignore[method-assign]
    assert calls == ["returned"]
    assert sample(registry, "pool_checkouts_total", "same") == 1


def test_the_pool_gains_no_attribute_but_the_methods_it_shadows(engines, creator) -> None:
    engine = make_engine(engines, creator)
    before = set(vars(engine.pool))
    poolwatch.instrument(engine, name="attrs", registry=CollectorRegistry())
    added = set(vars(engine.pool)) - before
    assert added <= set(dir(QueuePool))
    engine.dispose()
    assert set(vars(engine.pool)) - before <= set(dir(QueuePool))  # the recreated pool too


def dropped_connection(engine: Engine) -> None:
    """Check a connection out and drop it unclosed, the way a buggy request handler does."""
    connection = engine.connect()
    connection.execute(text("SELECT 1"))


def test_a_connection_the_application_drops_is_returned_by_gc_with_leak_detection(engines, creator) -> None:
    registry = CollectorRegistry()
    engine = make_engine(engines, creator, pool_size=1, max_overflow=0, pool_timeout=0.2)
    poolwatch.instrument(engine, name="dropped", registry=registry, leak_threshold=0.001)
    dropped_connection(engine)
    gc.collect()
    with engine.connect() as connection:  # the pool's one connection came back: no QueuePool timeout
        assert connection.execute(text("SELECT 1")).scalar() == 1
    assert sample(registry, "pool_checkouts_total", "dropped") == 2
    assert errors(registry, "dropped") == 0


def test_a_failed_reconnect_of_an_invalidated_connection_is_no_internal_error(engines, creator) -> None:
    registry = CollectorRegistry()
    engine = make_engine(engines, creator, pool_size=1, max_overflow=0)
    poolwatch.instrument(engine, name="down", registry=registry, leak_threshold=60)
    with engine.connect() as connection:
        connection.invalidate()  # the database went away under it
    creator.failing = True
    for _ in range(3):  # SQLAlchemy hands the record it could not reconnect back to the pool
        with pytest.raises(OperationalError):
            engine.connect()
    creator.failing = False
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    assert sample(registry, "pool_connect_errors_total", "down", reason="other") == 3
    assert sample(registry, "pool_checkouts_total", "down") == 2
    assert sample(registry, "pool_pending_requests", "down") == 0
    assert errors(registry, "down") == 0


def test_a_failed_first_connect_is_no_internal_error(engines, creator) -> None:
    registry = CollectorRegistry()
    creator.failing = True
    engine = make_engine(engines, creator, pool_size=1)
    poolwatch.instrument(engine, name="never", registry=registry)
    for _ in range(2):
        with pytest.raises(OperationalError):
            engine.connect()
    assert sample(registry, "pool_connect_errors_total", "never", reason="other") == 2
    assert errors(registry, "never") == 0


def test_a_timed_out_checkout_is_observed_in_the_wait_histogram(engines, creator) -> None:
    registry = CollectorRegistry()
    engine = make_engine(engines, creator, pool_size=1, max_overflow=0, pool_timeout=0.05)
    poolwatch.instrument(engine, name="slow", registry=registry)
    held = engine.connect()
    with pytest.raises(PoolTimeoutError):
        engine.connect()
    held.close()
    assert sample(registry, "pool_timeouts_total", "slow") == 1
    assert sample(registry, "pool_wait_seconds_count", "slow") == 2  # the checkout and the timeout
    # The timed-out caller waited the whole pool_timeout (0.05 s), whatever the first checkout took.
    assert sample(registry, "pool_wait_seconds_sum", "slow") >= 0.05
    assert sample(registry, "pool_wait_seconds_bucket", "slow", le="0.025") <= 1


def test_dispose_and_recreate_keep_counting_without_internal_errors(engines, creator) -> None:
    registry = CollectorRegistry()
    engine = make_engine(engines, creator, pool_size=2)
    poolwatch.instrument(engine, name="disposed", registry=registry, leak_threshold=60)
    held = engine.connect()
    engine.dispose()
    held.close()  # returned to the disposed pool
    with engine.connect():
        pass
    engine.dispose(close=False)  # what an application does after a fork
    with engine.connect():
        pass
    assert sample(registry, "pool_checkouts_total", "disposed") == 3
    assert sample(registry, "pool_use_seconds_count", "disposed") == 3
    assert errors(registry, "disposed") == 0


def test_a_pool_built_directly_is_instrumented(creator) -> None:
    registry = CollectorRegistry()
    pool = QueuePool(creator, pool_size=2, max_overflow=1)
    poolwatch.instrument(pool, name="direct", registry=registry)
    first, second = pool.connect(), pool.connect()
    assert sample(registry, "pool_connections", "direct", state="used") == 2
    first.close()
    second.close()
    assert sample(registry, "pool_checkouts_total", "direct") == 2
    assert sample(registry, "pool_create_seconds_count", "direct") == 2
    assert sample(registry, "pool_max_connections", "direct") == 3
    pool.dispose()
    assert sample(registry, "pool_closed_total", "direct", reason="dispose") == 2


def pool_state(engine: Engine) -> tuple[dict[str, Any], dict[str, int]]:
    """What instrumenting may change: the pool's instance attributes and its event listeners."""
    pool = engine.pool
    names = ("connect", "invalidate", "soft_invalidate", "close", "detach", "checkin", "checkout")
    return dict(vars(pool)), {name: len(getattr(pool.dispatch, name)) for name in names}


def test_a_refused_instrument_leaves_the_engine_as_it_was(engines, creator) -> None:
    registry = CollectorRegistry()
    taken = make_engine(engines, creator)
    poolwatch.instrument(taken, name="taken", registry=registry)
    engine = make_engine(engines, creator)
    before = pool_state(engine)
    with pytest.raises(ValueError, match="already instrumented on this registry"):
        poolwatch.instrument(engine, name="taken", registry=registry)
    assert pool_state(engine) == before
    with pytest.raises(ValueError, match="leak_threshold must be > 0"):
        poolwatch.instrument(engine, name="fresh", registry=registry, leak_threshold=0)
    assert pool_state(engine) == before
    with pytest.raises(ValueError, match="already instrumented"):
        poolwatch.instrument(taken, name="again", registry=registry)
    null = create_engine("sqlite://", creator=creator, poolclass=StaticPool)
    null_before = dict(vars(null.pool))
    with pytest.raises(TypeError, match="not a QueuePool"):
        poolwatch.instrument(null, name="null", registry=registry)
    assert vars(null.pool) == null_before
    # Once refused, the same engine can still be instrumented: nothing was left half done.
    poolwatch.instrument(engine, name="fresh", registry=registry)
    with engine.connect():
        pass
    assert sample(registry, "pool_checkouts_total", "fresh") == 1


def test_a_failure_while_hooking_undoes_everything(engines, creator, monkeypatch) -> None:
    from poolwatch.instrument import sqlalchemy as adapter

    registry = CollectorRegistry()
    engine = make_engine(engines, creator)
    before = pool_state(engine)

    def broken(*_args: object) -> None:
        raise RuntimeError("hooking failed")

    monkeypatch.setattr(adapter, "_hook", broken)
    with pytest.raises(RuntimeError, match="hooking failed"):
        poolwatch.instrument(engine, name="half", registry=registry)
    assert pool_state(engine) == before
    assert registry.get_sample_value("poolwatch_pool_size", {"pool": "half"}) is None
    monkeypatch.undo()
    poolwatch.instrument(engine, name="half", registry=registry)  # the name was given back


def test_eight_threads_through_invalidations_and_failed_connects(engines, creator) -> None:
    registry = CollectorRegistry()
    engine = make_engine(engines, creator, pool_size=2, max_overflow=2, pool_timeout=5)
    poolwatch.instrument(engine, name="churn", registry=registry, leak_threshold=0.001)
    invalidate = threading.Event()

    @event.listens_for(engine, "engine_connect")
    def sometimes_invalidate(connection: Any) -> None:
        if invalidate.is_set():
            connection.invalidate()

    def work(index: int) -> None:
        for turn in range(60):
            if index == 0 and turn % 10 == 0:
                invalidate.set() if turn % 20 == 0 else invalidate.clear()
                creator.failing = turn % 30 == 0
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            except Exception:  # failures are the point; poolwatch must not add any
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    creator.failing = False
    assert errors(registry, "churn") == 0
    assert sample(registry, "pool_pending_requests", "churn") == 0
