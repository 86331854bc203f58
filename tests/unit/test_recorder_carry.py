"""A pool that replaces another under the same name (a target rebuilt on reload) counts on from the
old pool's counters and histograms: from its first scrape, never from 0."""

from __future__ import annotations

import sqlalchemy
from prometheus_client import CollectorRegistry

import poolwatch


def counts(registry: CollectorRegistry) -> dict[str, float | None]:
    value = registry.get_sample_value
    pool = {"pool": "orders", "server": "orders.db"}
    return {
        "checkouts": value("poolwatch_pool_checkouts_total", pool),
        "waits": value("poolwatch_pool_wait_seconds_count", pool),
        "uses": value("poolwatch_pool_use_seconds_count", {**pool, "holder": ""}),
        "closed": value("poolwatch_pool_closed_total", {**pool, "reason": "dispose"}),
        "pending": value("poolwatch_pool_pending_requests", pool),
    }


def test_a_replacing_pool_counts_on_from_the_one_it_replaces(tmp_path):
    registry = CollectorRegistry()
    old_engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'orders.db'}")
    old = poolwatch.instrument(old_engine, name="orders", registry=registry)
    for _ in range(3):
        with old_engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    old_engine.dispose()
    before = counts(registry)
    assert before == {"checkouts": 3, "waits": 3, "uses": 3, "closed": 1, "pending": 0}
    old.remove()
    assert counts(registry)["checkouts"] is None  # between the two pools: no series, never a 0

    new_engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'orders.db'}")
    poolwatch.instrument(new_engine, name="orders", registry=registry, counts_from=old.recorder)
    assert counts(registry) == before
    with new_engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert counts(registry)["checkouts"] == 4
    new_engine.dispose()
