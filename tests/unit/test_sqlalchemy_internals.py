"""Pinned: the private parts of SQLAlchemy the adapter reads, on SQLite (no server), so a unit run
after a SQLAlchemy upgrade fails here first. scripts/test runs this on the oldest supported version too."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pytest
import sqlalchemy
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch.instrument.sqlalchemy import _EVENTS, connected_at, pool_internals, record_of
from tests.poolmetrics import FakeClock, sample

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    made = create_engine(
        f"sqlite:///{tmp_path / 'pin.db'}", poolclass=QueuePool, pool_size=3, max_overflow=2, pool_recycle=77
    )
    yield made
    made.dispose()


def test_supported_version() -> None:
    major, minor, patch = (int(part) for part in sqlalchemy.__version__.split(".")[:3])
    assert (2, 0, 0) <= (major, minor, patch) < (2, 2, 0)


def test_pool_internals_read_what_housekeeping_and_gauges_use(engine) -> None:
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    internals = pool_internals(pool)
    assert internals.max_overflow == 2
    assert internals.recycle == 77
    assert isinstance(internals.invalidate_time(), float | int)
    assert internals.dialect is engine.dialect
    assert internals.idle_records is not None
    assert len(internals.idle_records) == 0
    with internals.mutex:
        pass
    fairy = pool.connect()
    record = record_of(fairy)
    assert record.dbapi_connection is fairy.dbapi_connection
    assert abs(connected_at(record) - time.time()) < 60
    fairy.close()
    assert list(internals.idle_records) == [record]
    # Housekeeping takes a record out of the queue, gives it back, opens one to refill.
    internals.idle_records.remove(record)
    internals.give_back(record)
    assert list(internals.idle_records) == [record]
    assert internals.inc_overflow()
    opened = internals.create()
    assert opened.dbapi_connection is not None
    internals.give_back(opened)
    assert pool.checkedin() == 2
    internals.dec_overflow()
    assert internals.dialect.do_ping(record.dbapi_connection)


def test_the_hooked_methods_and_events_exist_as_the_hooks_call_them(engine) -> None:
    pool = engine.pool
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="pin", registry=registry)
    for name in _EVENTS:
        assert [fn for fn in getattr(pool.dispatch, name) if getattr(fn, "__name__", "") == f"on_{name}"]
    with engine.connect():
        assert sample(registry, "pool_connections", "pin", state="used") == 1
    assert sample(registry, "pool_checkouts_total", "pin") == 1
    assert sample(registry, "pool_use_seconds_count", "pin") == 1  # _return_conn() is where checkins end
    assert sample(registry, "pool_create_seconds_count", "pin") == 1  # the connect event
    engine.dispose()
    assert sample(registry, "pool_closed_total", "pin", reason="dispose") == 1  # the close event
    with engine.connect():  # the recreated pool is hooked
        pass
    assert sample(registry, "pool_checkouts_total", "pin") == 2


def test_the_caller_depth_reaches_the_applications_frame(engine, caplog) -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="depth", registry=registry, leak_threshold=1, clock=clock)
    caplog.set_level(logging.WARNING, logger="poolwatch.instrument")
    connection = engine.connect()  # this line must head the leak warning's stack
    clock.advance(2)
    assert sample(registry, "pool_leaked_connections", "depth") == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    last = warning.rstrip().splitlines()[-2:]
    assert "in test_the_caller_depth_reaches_the_applications_frame" in last[0]
    assert "connection = engine.connect()  # this line must head" in last[1]
    connection.close()
