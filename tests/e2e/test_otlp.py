"""The daemon's OTLP push, end to end: the real OTLP/HTTP exporter posts to a receiver in the test,
which decodes the protobuf; the pool, probe, census and reaper metrics arrive under their names, with
the headers from headers_file, and a last push is made when the daemon stops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

import poolwatch
from poolwatch.config import validate
from poolwatch.metrics import LATENCY_BUCKETS, PROBE_BUCKETS, Metrics
from poolwatch.otlp import OtlpPush
from tests.daemonkit import running_daemon
from tests.otlpreceiver import GrpcOtlpReceiver, OtlpReceiver, attributes, metrics_of, resource_attributes

if TYPE_CHECKING:
    from pathlib import Path

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

POOL = "db.client.connection.pool.name"
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def has(*names: str):
    return lambda request: set(names) <= set(metrics_of(request))


def points(metric, kind: str) -> list[Any]:
    return list(getattr(metric, kind).data_points)


def only(metric, kind: str, **wanted: str):
    found = [p for p in points(metric, kind) if wanted.items() <= attributes(p).items()]
    assert len(found) == 1, (metric.name, wanted, [attributes(p) for p in points(metric, kind)])
    return found[0]


def test_the_daemon_pushes_pools_probes_census_and_reaper_over_otlp_http(
    pg: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "headers").write_text("# the backend's key\nAuthorization: Bearer e2e-token-4711\n")
    with OtlpReceiver() as receiver:
        config = {
            "otlp": {
                "endpoint": receiver.endpoint,
                "interval": 1,
                "headers_file": str(tmp_path / "headers"),
            },
            "targets": [
                {
                    "name": "orders",
                    "kind": "postgres",
                    "url": pg.url(),
                    "pool": {"size": 3, "max_overflow": 2},
                    "probe": {"interval": 0.5, "timeout": 0.5},
                    "census": {"interval": 0.5, "timeout": 0.5},
                    "reaper": {
                        "enabled": True,
                        "interval": 1,
                        "timeout": 1,
                        "idle_timeout": 3600,
                        "applications": ["nobody-here"],
                    },
                }
            ],
        }
        with running_daemon(config) as daemon:

            def probed_and_counted(request) -> bool:
                found = metrics_of(request)
                if not {"poolwatch.up", "poolwatch.server.connections", "db.client.connection.count"} <= set(
                    found
                ):
                    return False
                up = only(found["poolwatch.up"], "gauge", **{"poolwatch.target": "orders"})
                return bool(up.as_double == 1)

            headers, request = receiver.wait_for(probed_and_counted)
            assert headers["authorization"] == "Bearer e2e-token-4711"
            resource = resource_attributes(request)
            assert resource["service.name"] == "poolwatch"
            assert daemon._otlp is not None
            assert resource["service.instance.id"] == daemon._otlp.instance
            found = metrics_of(request)

            # The pools, as the semantic conventions name them.
            count = found["db.client.connection.count"]
            assert count.unit == "{connection}"
            assert not count.sum.is_monotonic
            states = {attributes(p)["db.client.connection.state"] for p in points(count, "sum")}
            assert states == {"idle", "used"}
            assert all(attributes(p)[POOL] == "orders" for p in points(count, "sum"))
            assert only(found["db.client.connection.idle.max"], "sum").as_int == 3
            assert only(found["db.client.connection.max"], "sum").as_int == 5
            wait = found["db.client.connection.wait_time"]
            assert wait.unit == "s"
            assert list(only(wait, "histogram").explicit_bounds) == list(LATENCY_BUCKETS)
            checkouts = only(found["poolwatch.pool.checkouts"], "sum")
            assert found["poolwatch.pool.checkouts"].sum.is_monotonic
            assert checkouts.as_int >= 1

            # The probe: a gauge, a histogram with Prometheus' buckets, counters by reason.
            duration = found["poolwatch.probe.duration"]
            assert duration.unit == "s"
            assert duration.histogram.aggregation_temporality == CUMULATIVE
            probe = only(duration, "histogram", **{"poolwatch.target": "orders"})
            assert probe.count >= 1
            assert sum(probe.bucket_counts) == probe.count
            assert list(probe.explicit_bounds) == list(PROBE_BUCKETS)
            failures = found["poolwatch.probe.failures"]
            assert failures.sum.is_monotonic
            assert failures.sum.aggregation_temporality == CUMULATIVE
            assert only(failures, "sum", **{"poolwatch.reason": "auth"}).as_double == 0

            # The census and the reaper (dry run, nobody to terminate).
            census = found["poolwatch.server.connections"]
            assert sum(p.as_double for p in points(census, "gauge")) >= 1
            terminated = found["poolwatch.reaper.terminated"]
            modes = {
                (attributes(p)["poolwatch.reason"], attributes(p)["poolwatch.mode"])
                for p in points(terminated, "sum")
            }
            assert modes == {(r, m) for r in ("idle", "idle_in_transaction") for m in ("enforce", "dry_run")}
            assert all(p.as_double == 0 for p in points(terminated, "sum"))
            pushed_while_running = len(receiver.requests)
        # Stopping pushes a last time.
        receiver.wait_for(lambda _request: len(receiver.requests) > pushed_while_running, timeout=15)


def test_the_daemon_pushes_over_otlp_grpc_with_its_headers_as_metadata(tmp_path: Path) -> None:
    (tmp_path / "headers").write_text("X-Api-Key: grpc-key-0815\n")
    (tmp_path / "state").mkdir()
    with GrpcOtlpReceiver() as receiver:
        config = {
            "otlp": {
                "endpoint": receiver.endpoint,
                "protocol": "grpc",
                "interval": 1,
                "headers_file": str(tmp_path / "headers"),
            },
            "targets": [
                {
                    "name": "lite",
                    "kind": "sqlite",
                    "url": f"sqlite:///{tmp_path / 'state' / 'lite.db'}",
                    "probe": {"interval": 0.5, "timeout": 0.5},
                }
            ],
        }
        with running_daemon(config):

            def probed(request) -> bool:
                found = metrics_of(request)
                return "poolwatch.up" in found and only(found["poolwatch.up"], "gauge").as_double == 1

            metadata, request = receiver.wait_for(probed)
        assert metadata["x-api-key"] == "grpc-key-0815"
        found = metrics_of(request)
        assert only(found["db.client.connection.idle.max"], "sum", **{POOL: "lite"}).as_int == 5
        assert found["poolwatch.probe.duration"].unit == "s"


def test_without_any_pool_the_push_carries_the_daemons_families_exactly() -> None:
    metrics = Metrics()
    metrics.probe.add_target("bouncer")
    metrics.probe.up.labels("bouncer").set(1)
    for seconds in (0.0002, 0.003, 0.2, 40.0):
        metrics.probe.duration.labels("bouncer").observe(seconds)
    metrics.probe.failures.labels("bouncer", "refused").inc(2)
    with OtlpReceiver() as receiver:
        settings = validate({"otlp": {"endpoint": receiver.endpoint, "interval": 3600}}).otlp
        assert settings is not None
        push = OtlpPush(settings, metrics.registry)
        push.close()  # pushes once
        _headers, request = receiver.wait_for(has("poolwatch.up"))
    found = metrics_of(request)
    assert not any(name.startswith("db.client.connection.") and points(m, "sum") for name, m in found.items())
    assert only(found["poolwatch.up"], "gauge", **{"poolwatch.target": "bouncer"}).as_double == 1
    build = only(found["poolwatch.build.info"], "gauge")
    assert build.as_double == 1
    assert attributes(build)["poolwatch.version"] == poolwatch.__version__
    refused = only(found["poolwatch.probe.failures"], "sum", **{"poolwatch.reason": "refused"})
    assert refused.as_double == 2
    duration = only(found["poolwatch.probe.duration"], "histogram")
    assert duration.count == 4
    assert duration.sum == pytest.approx(40.2032)
    expected = [0] * (len(PROBE_BUCKETS) + 1)
    for seconds in (0.0002, 0.003, 0.2, 40.0):
        expected[
            next((i for i, bound in enumerate(PROBE_BUCKETS) if seconds <= bound), len(PROBE_BUCKETS))
        ] += 1
    assert list(duration.bucket_counts) == expected
    assert not duration.HasField("min")
