"""A service's own OpenTelemetry SDK, end to end: ``poolwatch.otel.install(provider)`` with a
PeriodicExportingMetricReader and the real OTLP/HTTP exporter, posting to a receiver in the test that
decodes the protobuf. A scripted workload on real PostgreSQL (exhaustion, a timeout) arrives with
every db.client.connection.* instrument, its unit, its attributes and exact counts; worker processes
that set their SDK up after the fork each export under their own service.instance.id, and their
checkouts add up to the fleet's."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

import poolwatch
from poolwatch import otel
from poolwatch.metrics import LATENCY_BUCKETS
from poolwatch.otelnames import POOL_NAME, POOL_NAMES, SERVER, STATE
from tests.otlpreceiver import OtlpReceiver, attributes, metrics_of, resource_attributes

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

SDK_VERSION = tuple(int(part) for part in metadata.version("opentelemetry-sdk").split(".")[:2])
HOUR_MS = 3_600_000  # the reader's interval: only force_flush() and shutdown() export in these tests
# The protobuf field of each instrument's points, and whether a sum is monotonic.
FIELDS = {
    "Counter": ("sum", True),
    "UpDownCounter": ("sum", False),
    "Gauge": ("gauge", None),
    "Histogram": ("histogram", None),
}


class Service:
    """What an application does: its own Resource, exporter, reader and provider, then install()."""

    def __init__(self, endpoint: str, instance: str, registry: CollectorRegistry | None = None) -> None:
        resource = Resource.create(
            {"service.name": "orders-api", "service.instance.id": instance, "process.pid": os.getpid()}
        )
        exporter = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=10)
        self.reader = PeriodicExportingMetricReader(exporter, export_interval_millis=HOUR_MS)
        self.provider = MeterProvider(resource=resource, metric_readers=[self.reader])
        self.publisher = otel.install(self.provider, registry=registry)

    def flush(self) -> None:
        assert self.provider.force_flush(timeout_millis=15_000)

    def close(self) -> None:
        self.publisher.close()
        self.provider.shutdown()


def points(metric: Any) -> list[Any]:
    return list(getattr(metric, metric.WhichOneof("data")).data_points)


def value(metric: Any, **wanted: str) -> Any:
    """The one point of ``metric`` whose attributes include ``wanted`` (dots as ``__``): a number
    point's value (an int, checked), or the histogram point."""
    wanted = {key.replace("__", "."): item for key, item in wanted.items()}
    found = [p for p in points(metric) if wanted.items() <= attributes(p).items()]
    assert len(found) == 1, (metric.name, wanted, [attributes(p) for p in points(metric)])
    if metric.WhichOneof("data") == "histogram":
        return found[0]
    assert found[0].WhichOneof("value") == "as_int", (metric.name, found[0])
    return found[0].as_int


def checkouts_of(request: ExportMetricsServiceRequest) -> int | None:
    found = metrics_of(request).get("poolwatch.pool.checkouts")
    return None if found is None or not points(found) else value(found)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def test_a_scripted_workload_arrives_over_otlp_http_with_exact_counts(
    pg: PostgresServer, receiver: OtlpReceiver
) -> None:
    registry = CollectorRegistry()
    instance = str(uuid.uuid4())
    service = Service(receiver.endpoint, instance, registry)
    engine = create_engine(
        pg.url(),
        connect_args={"application_name": "pw-otel-e2e", "connect_timeout": 5},
        pool_size=2,
        max_overflow=1,
        pool_timeout=0.5,
    )
    try:
        poolwatch.instrument(engine, name="orders", registry=registry)
        for _ in range(6):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        # Exhaustion: the two pooled connections and the one overflow held; one more caller times out.
        held = [engine.connect() for _ in range(3)]
        with pytest.raises(PoolTimeoutError):
            engine.connect()
        service.flush()
        _headers, busy = receiver.wait_for(lambda request: checkouts_of(request) == 9)
        for connection in held:
            connection.close()  # the overflow connection is closed, the pool keeps two
        service.flush()
        _headers, calm = receiver.wait_for(lambda request: checkouts_of(request) == 9 and request is not busy)
    finally:
        service.close()
        engine.dispose()

    for request in (busy, calm):
        resource = resource_attributes(request)
        assert resource["service.name"] == "orders-api"
        assert resource["service.instance.id"] == instance
        scope = request.resource_metrics[0].scope_metrics[0].scope
        assert scope.name == "poolwatch"
        assert scope.version == poolwatch.__version__
        found = metrics_of(request)
        # Every instrument of the mapping, with its unit and kind; every point of the pool.
        assert set(found) == {otel_name.name for otel_name in POOL_NAMES.values()}
        for otel_name in POOL_NAMES.values():
            metric = found[otel_name.name]
            assert metric.unit == otel_name.unit, metric.name
            field, monotonic = FIELDS[otel_name.instrument]
            assert metric.WhichOneof("data") == field, metric.name
            if monotonic is not None:
                assert metric.sum.is_monotonic is monotonic, metric.name
            assert points(metric), metric.name
            for point in points(metric):
                labels = attributes(point)
                assert labels[POOL_NAME] == "orders", metric.name
                assert labels[SERVER] == f"{pg.host}:{pg.port}/postgres", metric.name
                assert set(labels) <= set(otel_name.attributes), metric.name
                if field == "sum":
                    assert point.WhichOneof("value") == "as_int", metric.name
        assert {attributes(p)[STATE] for p in points(found["db.client.connection.count"])} == {
            "idle",
            "used",
        }
        assert value(found["db.client.connection.max"]) == 3
        assert value(found["db.client.connection.idle.max"]) == 2
        assert value(found["db.client.connection.idle.min"]) == 0
        assert value(found["db.client.connection.pending_requests"]) == 0
        assert value(found["poolwatch.pool.checkouts"]) == 9
        assert value(found["db.client.connection.timeouts"]) == 1
        assert value(found["poolwatch.instrumentation.errors"]) == 0
        wait = value(found["db.client.connection.wait_time"])
        assert wait.count == 10  # nine handed out, one timed out
        assert list(wait.explicit_bounds) == list(LATENCY_BUCKETS)
        assert sum(wait.bucket_counts[LATENCY_BUCKETS.index(0.5) + 1 :]) == 1  # the 0.5 s timeout
        assert value(found["db.client.connection.create_time"]).count == 3

    found = metrics_of(busy)
    assert value(found["db.client.connection.count"], db__client__connection__state="used") == 3
    assert value(found["db.client.connection.count"], db__client__connection__state="idle") == 0
    assert value(found["poolwatch.pool.overflow"]) == 1
    assert value(found["db.client.connection.use_time"]).count == 6
    assert value(found["poolwatch.pool.closes"], poolwatch__close__reason="overflow") == 0

    found = metrics_of(calm)
    assert value(found["db.client.connection.count"], db__client__connection__state="used") == 0
    assert value(found["db.client.connection.count"], db__client__connection__state="idle") == 2
    assert value(found["poolwatch.pool.overflow"]) == 0
    assert value(found["db.client.connection.use_time"]).count == 9
    assert value(found["poolwatch.pool.closes"], poolwatch__close__reason="overflow") == 1


# -- several worker processes -------------------------------------------------------------------------

WORKER_CHECKOUTS = (3, 5, 8)


def worker(url: str, endpoint: str, checkouts: int) -> None:
    """A forked worker: its SDK set up after the fork, with an instance id of its own. (Its own
    registry: the pools of the tests run before in this process are not the worker's.)"""
    registry = CollectorRegistry()
    engine = create_engine(url, connect_args={"application_name": "pw-otel-worker"}, pool_size=1)
    service = Service(endpoint, str(uuid.uuid4()), registry)
    poolwatch.instrument(engine, name="orders", registry=registry)
    for _ in range(checkouts):
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    service.flush()
    service.close()
    engine.dispose()


def test_workers_set_up_after_the_fork_export_their_own_instance_ids(
    pg: PostgresServer, receiver: OtlpReceiver
) -> None:
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=worker, args=(pg.url(), receiver.endpoint, n)) for n in WORKER_CHECKOUTS
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    by_pid = {process.pid: n for process, n in zip(processes, WORKER_CHECKOUTS, strict=True)}

    # The last push of each instance (force_flush, then shutdown's; counters are cumulative).
    last: dict[str, tuple[int, int]] = {}
    for _headers, request in receiver.requests:
        resource = resource_attributes(request)
        checkouts = checkouts_of(request)
        if checkouts is not None:
            last[resource["service.instance.id"]] = (resource["process.pid"], checkouts)
    assert len(last) == len(processes)
    assert dict(last.values()) == by_pid
    assert sum(checkouts for _pid, checkouts in last.values()) == sum(WORKER_CHECKOUTS)


def inheriting_worker(service: Service, registry: CollectorRegistry, url: str, checkouts: int) -> None:
    """A forked worker that uses the SDK its parent set up before the fork."""
    engine = create_engine(url, connect_args={"application_name": "pw-otel-worker"}, pool_size=1)
    poolwatch.instrument(engine, name="orders", registry=registry)
    for _ in range(checkouts):
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    service.flush()  # the reader's export thread was started again in this process
    service.close()
    engine.dispose()


@pytest.mark.skipif(
    SDK_VERSION < (1, 44), reason="opentelemetry-sdk before 1.44 keeps the parent's service.instance.id"
)
def test_a_provider_made_before_the_fork_gets_a_new_instance_id_in_every_worker(
    pg: PostgresServer, receiver: OtlpReceiver
) -> None:
    """What docs/opentelemetry.md says of a provider set up before the fork: the SDK replaces
    service.instance.id in each child, even one given explicitly; other attributes stay the parent's."""
    registry = CollectorRegistry()
    instance = str(uuid.uuid4())
    service = Service(receiver.endpoint, instance, registry)
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=inheriting_worker, args=(service, registry, pg.url(), n))
        for n in WORKER_CHECKOUTS
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
    finally:
        service.close()
    last: dict[str, int] = {}
    for _headers, request in receiver.requests:
        resource = resource_attributes(request)
        assert resource["process.pid"] == os.getpid()  # as given: the parent's
        checkouts = checkouts_of(request)
        if checkouts is not None:
            last[resource["service.instance.id"]] = checkouts
    assert instance not in last
    assert sorted(last.values()) == sorted(WORKER_CHECKOUTS)
