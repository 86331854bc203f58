"""With poolwatch.otel installed, checking a connection out and in calls no OpenTelemetry code: every
SDK instrument raises while the checkouts run, and a profiler sees no frame of OpenTelemetry or of
poolwatch.otel on that thread; the collection afterwards still publishes every checkout. Between two
collections a pool's histogram samples wait in a bounded backlog."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import opentelemetry
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal import instrument as sdk_instrument
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch import otel
from poolwatch.instrument.recorder import SAMPLE_LIMIT
from tests.otelread import collect
from tests.poolmetrics import sample

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# Where OpenTelemetry's code (API, SDK, exporters) and poolwatch's publishing live.
WATCHED = (str(Path(opentelemetry.__path__[0])), str(Path(otel.__file__)))
CHECKOUTS = 40


class OpenTelemetryCalled(AssertionError):
    pass


def refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise OpenTelemetryCalled("an OpenTelemetry instrument was used on the checkout path")


class Watch:
    """A profiler on this thread noting every Python frame of WATCHED code entered while it runs."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _profile(self, frame: Any, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(WATCHED):
            self.seen.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    def __enter__(self) -> Watch:
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *_exc: object) -> None:
        sys.setprofile(None)


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Calling the result makes every SDK instrument's recording and callback method raise."""

    def arm() -> None:
        for cls, method in (
            (sdk_instrument._Counter, "add"),
            (sdk_instrument._UpDownCounter, "add"),
            (sdk_instrument._Histogram, "record"),
            (sdk_instrument._Gauge, "set"),
            (sdk_instrument._Asynchronous, "callback"),
        ):
            monkeypatch.setattr(cls, method, refuse)

    return arm


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'lite.db'}", poolclass=QueuePool, pool_size=2, max_overflow=1
    )
    yield engine
    engine.dispose()


def test_checkouts_make_no_opentelemetry_call(engine, armed, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    publisher = otel.install(provider, registry=registry)
    poolwatch.instrument(engine, name="lite", registry=registry)
    with engine.connect() as connection:  # the pool's first connection, outside the watch
        connection.execute(text("SELECT 1"))
    collect(reader)

    armed()
    with Watch() as watch:
        for _ in range(CHECKOUTS - 2):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        with engine.connect(), engine.connect():  # two at once: a second connection is made
            pass
    assert watch.seen == []

    # The watch and the armed instruments do see a collection: the test would catch a call.
    with Watch() as watch, pytest.raises(OpenTelemetryCalled):
        reader.get_metrics_data()
    assert any(seen.startswith(WATCHED[0]) for seen in watch.seen)

    monkeypatch.undo()
    found = collect(reader)
    assert found["poolwatch.pool.checkouts"].value() == CHECKOUTS + 1
    assert found["db.client.connection.wait_time"].value().count == CHECKOUTS + 1
    assert found["db.client.connection.use_time"].value().count == CHECKOUTS + 1
    assert found["db.client.connection.create_time"].value().count == 2
    publisher.close()
    provider.shutdown()


def test_a_backlog_beyond_the_sample_limit_keeps_the_newest_and_warns_once(
    engine, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    publisher = otel.install(provider, registry=registry)
    waits = poolwatch.instrument(engine, name="lite", registry=registry).recorder.waits
    # Scrapes fold the recorder's samples into the backlog; no collection takes them in between.
    for batch in (SAMPLE_LIMIT - 10, 20, 30):
        for _ in range(batch):
            waits.append(0.001)
        waits.append(25.0)  # the newest of each batch
        with caplog.at_level(logging.WARNING, logger="poolwatch.otel"):
            assert sample(registry, "pool_wait_seconds_count", "lite") > 0
    warnings = [record.getMessage() for record in caplog.records if record.name == "poolwatch.otel"]
    assert len(warnings) == 1
    assert "pool lite: more than 65536 samples" in warnings[0]
    # Recording 65,536 samples can outlast the SDK's default 10 s on a loaded machine.
    wait = collect(reader, timeout_millis=600_000)["db.client.connection.wait_time"].value()
    assert wait.count == SAMPLE_LIMIT
    assert wait.bucket_counts[-2] == 3  # 25 s: the newest sample of every batch kept
    assert sample(registry, "pool_wait_seconds_count", "lite") == SAMPLE_LIMIT + 43
    publisher.close()
    provider.shutdown()
