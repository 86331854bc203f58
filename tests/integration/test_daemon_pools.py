"""The daemon instruments its own shared engines and clients and schedules their housekeeping."""

from __future__ import annotations

import pytest

from poolwatch.config import validate
from poolwatch.daemon import build_target
from poolwatch.metrics import Metrics
from tests.poolmetrics import sample

pytestmark = pytest.mark.integration


def test_build_target_instruments_the_engine_and_adds_housekeeping(pg) -> None:
    settings = validate(
        {
            "targets": [
                {
                    "name": "orders",
                    "kind": "postgres",
                    "url": pg.url(),
                    "pool": {"size": 2, "min_idle": 1, "housekeeping_interval": 0.5, "leak_threshold": 5},
                }
            ]
        }
    )
    metrics = Metrics()
    runtime = build_target(settings.targets[0], metrics)
    try:
        assert [job.task for job in runtime.jobs] == ["probe", "housekeeping", "census"]
        housekeeping = runtime.jobs[1]
        assert housekeeping.interval == 0.5
        runtime.probe.run()
        housekeeping.run()
        assert sample(metrics.registry, "pool_checkouts_total", "orders") == 1
        assert sample(metrics.registry, "pool_min_idle", "orders") == 1
        assert sample(metrics.registry, "pool_size", "orders") == 2
        assert sample(metrics.registry, "pool_connections", "orders", state="idle") == 1
        assert [app for _pid, app, _state in pg.backends("poolwatch-orders")] == ["poolwatch-orders"]
    finally:
        runtime.close()
    # Closing the target removes its series, so a reload can build it again on the same registry.
    assert metrics.registry.get_sample_value("poolwatch_pool_size", {"pool": "orders"}) is None
    again = build_target(settings.targets[0], metrics)
    again.close()


def test_build_target_instruments_a_redis_client(redis_server) -> None:
    settings = validate({"targets": [{"name": "cache", "kind": "redis", "url": redis_server.url()}]})
    metrics = Metrics()
    runtime = build_target(settings.targets[0], metrics)
    try:
        runtime.probe.run()
        for job in runtime.jobs:
            if job.task == "housekeeping":
                job.run()
        assert sample(metrics.registry, "pool_checkouts_total", "cache") == 1
        assert [job.task for job in runtime.jobs] == ["probe", "housekeeping", "census"]
    finally:
        runtime.close()
