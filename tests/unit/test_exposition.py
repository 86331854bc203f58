"""The fast /metrics renderer says exactly what prometheus_client's generate_latest says (less the
``_created`` series), for every kind of collector; this pins its use of prometheus_client internals."""

from __future__ import annotations

import contextlib
import gzip
import math
import random
import re
from typing import Any

import prometheus_client
import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families

from poolwatch import exposition
from poolwatch.http import Endpoint
from poolwatch.metrics import POOL_METRICS, Metrics, Rows, RowsSource
from tests.statusdocs import document


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def assert_same_samples(ours: str, theirs: str) -> None:
    ours_samples, their_samples = samples(ours), samples(theirs)
    assert ours_samples.keys() == their_samples.keys()
    for key, value in their_samples.items():
        assert ours_samples[key] == pytest.approx(value, nan_ok=True), key


def headers(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#") and "_created" not in line]


class PoolCollector:
    """A scrape-time collector, as the instrumentation's pool-state collector is."""

    def collect(self):
        family = GaugeMetricFamily("poolwatch_test_pool_connections", "Open connections.", labels=["pool"])
        family.add_metric(["orders"], 3)
        yield family


class EveryFamilyCollector:
    """A custom collector yielding every metric family type prometheus_client has, one sample with
    a timestamp."""

    def collect(self):
        counter = CounterMetricFamily("custom_events", "Custom counter.", labels=["kind"])
        counter.add_metric(["a"], 4, timestamp=1_763_700_000.5)
        yield counter
        yield GaugeMetricFamily("custom_level", "Custom gauge.", value=7)
        yield SummaryMetricFamily("custom_latency_seconds", "Custom summary.", count_value=3, sum_value=1.5)
        gauge_histogram = GaugeHistogramMetricFamily(
            "custom_queue_bytes", "Custom gauge histogram.", labels=["queue"]
        )
        gauge_histogram.add_metric(["q"], [("1.0", 2), ("+Inf", 5)], gsum_value=7.5)
        yield gauge_histogram
        yield InfoMetricFamily("custom_build", "Custom info.", value={"version": "1.2"})
        yield StateSetMetricFamily("custom_mode", "Custom state set.", value={"on": True, "off": False})
        yield UnknownMetricFamily("custom_untyped", "Custom unknown.", value=3)


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for target in ("orders", 'we"ird\\name\nx', "50%s off"):  # written through %-templates
        metrics.probe.add_target(target)
        metrics.jobs.add_job("probe", target)
        metrics.probe.duration.labels(target).observe(0.0007)
        metrics.probe.duration.labels(target).observe(12.0)
        metrics.probe.failures.labels(target, "timeout").inc(3)
        metrics.jobs.last_success.labels("probe", target).set(1_763_700_000.25)
    Counter("plain_events", "An unlabelled counter.", registry=registry).inc(2)
    Gauge("plain_level", "An unlabelled gauge.", registry=registry).set(-math.inf)
    Gauge("fn_level", "A set_function gauge.", registry=registry).set_function(lambda: 42.0)
    Histogram("plain_seconds", "Unlabelled.", registry=registry, buckets=(0.1, 1.0)).observe(0.5)
    Summary("plain_summary_seconds", "A summary.", ["x"], registry=registry).labels("a").observe(2)
    Gauge("big_bytes", "Go notation past 1e6.", registry=registry).set(12345678.0)
    Gauge("nan_value", "NaN.", registry=registry).set(math.nan)
    Gauge("fn_labelled", "A labelled set_function gauge.", ["x"], registry=registry).labels("a").set_function(
        lambda: 1.5
    )
    Summary("plain_unlabelled_summary_seconds", "An unlabelled summary.", registry=registry).observe(0.2)
    Info("plain_build", "An unlabelled info.", registry=registry).info({"version": "1.0", "commit": "abc"})
    Info("labelled_build", "A labelled info.", ["part"], registry=registry).labels("core").info({"v": "2"})
    Enum("plain_state", "An unlabelled enum.", states=["starting", "running"], registry=registry).state(
        "running"
    )
    labelled_enum = Enum(
        "labelled_state", "A labelled enum.", ["target"], states=["up", "down"], registry=registry
    )
    labelled_enum.labels("orders").state("down")
    registry.register(PoolCollector())
    registry.register(EveryFamilyCollector())
    return registry


def without_created(text: str) -> list[str]:
    """The lines of a text-format body less the ``_created`` families, each sample's labels sorted
    (prometheus_client sorts them; the order is not significant)."""
    lines = []
    for line in text.splitlines():
        name = line.split(" ")[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        if name.endswith("_created"):
            continue
        match = None if line.startswith("#") else re.fullmatch(r"([^{ ]+)\{(.*)\}( .*)", line)
        if match is None:
            lines.append(line)
            continue
        pairs = sorted(re.findall(r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"', match.group(2)))
        lines.append(f"{match.group(1)}{{{','.join(pairs)}}}{match.group(3)}")
    return lines


def test_renders_the_same_series_and_values_as_prometheus_client(registry):
    ours = exposition.Renderer(registry).render().decode()
    theirs = generate_latest(registry).decode()
    assert_same_samples(ours, theirs)
    assert headers(ours) == headers(theirs)
    assert without_created(ours) == without_created(theirs)
    # Every family type prometheus_client writes in text format 0.0.4 is in the registry above.
    types = {line.split(" ")[3] for line in headers(theirs) if line.startswith("# TYPE")}
    assert types == {"counter", "gauge", "histogram", "summary", "untyped"}
    assert "# TYPE plain_build_info gauge" in ours
    assert "# TYPE labelled_state gauge" in ours


def test_created_series_are_left_out(registry):
    body = exposition.Renderer(registry).render().decode()
    assert "_created" not in body
    assert "_created" in generate_latest(registry).decode()


def test_takes_the_fast_path_for_plain_metrics():
    # If prometheus_client renames the private attributes the fast path reads, this fails (and the
    # renderer silently falls back to collect(), slower): update exposition.Renderer._plain then.
    registry = CollectorRegistry()
    renderer = exposition.Renderer(registry)
    assert renderer._plain(Counter("c", "c", ["a"], registry=registry)) is not None
    assert renderer._plain(Gauge("g", "g", registry=registry)) is not None
    histogram = Histogram("h", "h", ["a"], registry=registry)
    histogram.labels("x").observe(1)
    assert renderer._plain(histogram) is not None
    function_gauge = Gauge("f", "f", registry=registry)
    function_gauge.set_function(lambda: 1.0)
    assert renderer._plain(function_gauge) is None
    assert renderer._plain(Summary("s", "s", registry=registry)) is None


def test_a_gauge_given_a_function_after_a_scrape_leaves_the_fast_path():
    registry = CollectorRegistry()
    gauge = Gauge("level", "Set, then computed.", ["x"], registry=registry)
    gauge.labels("a").set(1)
    renderer = exposition.Renderer(registry)
    assert 'level{x="a"} 1.0' in renderer.render().decode()
    gauge.labels("a").set_function(lambda: 2.0)
    assert 'level{x="a"} 2.0' in renderer.render().decode()


def test_follows_changes_and_forgets_removed_series(registry):
    renderer = exposition.Renderer(registry)
    counter = Counter("moving", "Changes between scrapes.", ["target"], registry=registry)
    counter.labels("a").inc()
    assert 'moving_total{target="a"} 1.0' in renderer.render().decode()
    counter.labels("a").inc(2)
    counter.remove("a")
    counter.labels("b").inc(5)
    body = renderer.render().decode()
    assert 'target="a"' not in body.split("moving_total")[-1]
    assert 'moving_total{target="b"} 5.0' in body
    assert renderer._families[counter].keys == [("b",)]


def test_format_value_agrees_with_prometheus_client():
    for value in (0.0, 1.0, -2.5, 5e-05, 1e6, 1234567.0, 2.5e7, 1e20, -5e7, math.inf, -math.inf, math.nan):
        assert exposition.format_value(value) == prometheus_client.utils.floatToGoString(value)


def call(endpoint: Endpoint, accept: str, encoding: str = "") -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    environ = {
        "PATH_INFO": "/metrics",
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": "",
        "HTTP_ACCEPT": accept,
        "HTTP_ACCEPT_ENCODING": encoding,
    }
    body = b"".join(endpoint(environ, start_response))
    return str(seen["status"]), seen["headers"], body


def test_endpoint_serves_text_to_prometheus_and_openmetrics_to_who_insists(registry):
    endpoint = Endpoint(registry, healthy=lambda: True, ready=lambda: True, status=document)
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    status, head, body = call(endpoint, prometheus_accept, "gzip")
    assert status == "200 OK"
    assert head["Content-Type"] == exposition.CONTENT_TYPE
    assert head["Content-Encoding"] == "gzip"
    assert int(head["Content-Length"]) == len(body)
    assert_same_samples(gzip.decompress(body).decode(), generate_latest(registry).decode())
    # Again, with most families' gzip output reused and one family changed.
    Counter("late_events", "Registered after the first scrape.", registry=registry).inc()
    _, head, body = call(endpoint, prometheus_accept, "gzip")
    assert int(head["Content-Length"]) == len(body)
    assert_same_samples(gzip.decompress(body).decode(), generate_latest(registry).decode())
    _, head, plain = call(endpoint, prometheus_accept)
    assert "Content-Encoding" not in head
    assert plain == gzip.decompress(body)

    status, head, body = call(endpoint, "application/openmetrics-text; version=1.0.0")
    assert head["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_pool_collector_rows_say_what_its_collect_says(tmp_path):
    # The renderer takes the instrumentation's rows(); Prometheus' own exposition takes collect().
    import sqlalchemy

    import poolwatch
    from poolwatch.instrument.collector import collector_for

    registry = CollectorRegistry()
    engines = []
    for name in ("orders", "billing"):
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / name}.db")
        poolwatch.instrument(engine, name=name, registry=registry)
        for _ in range(3):
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        engines.append(engine)
    held = engines[0].connect()
    try:
        ours = exposition.Renderer(registry).render().decode()
        theirs = generate_latest(registry).decode()
    finally:
        held.close()
    assert RowsSource in type(collector_for(registry)).__mro__  # declared; mypy checks rows()
    assert_same_samples(ours, theirs)
    assert headers(ours) == headers(theirs)
    billing, orders = (
        (("pool", "billing"), ("server", "billing.db")),
        (("pool", "orders"), ("server", "orders.db")),
    )
    assert samples(ours)["poolwatch_pool_checkouts_total", billing] == 3
    assert samples(ours)["poolwatch_pool_connections", (*orders, ("state", "used"))] == 1


def series_text(family: Any, index: int) -> bytes:
    return bytes(family.body[family.ends[index] : family.ends[index + 1]])


def test_histogram_text_is_reused_until_the_histogram_changes(registry, tmp_path):
    # The text of an unchanged histogram series is the last scrape's; one that observed something
    # is written anew, from both kinds of source (a plain Histogram and the pool collector's rows).
    import sqlalchemy

    import poolwatch

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'reuse'}.db")
    poolwatch.instrument(engine, name="reuse", registry=registry)
    renderer = exposition.Renderer(registry)
    moving = Histogram("moving_seconds", "Observes between scrapes.", ["target"], registry=registry)
    moving.labels("a").observe(0.3)
    moving.labels("b").observe(0.3)
    first = renderer.render().decode()
    before = renderer._families[moving]
    pool_waits_before = renderer._families["poolwatch_pool_wait_seconds"]
    create_before = renderer._families["poolwatch_pool_max_connections"]
    moving.labels("a").observe(7.0)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    second = renderer.render().decode()
    assert_same_samples(second, generate_latest(registry).decode())
    assert samples(second)["moving_seconds_count", (("target", "a"),)] == 2
    assert (
        samples(first)["poolwatch_pool_wait_seconds_count", (("pool", "reuse"), ("server", "reuse.db"))] == 0
    )
    assert (
        samples(second)["poolwatch_pool_wait_seconds_count", (("pool", "reuse"), ("server", "reuse.db"))] == 1
    )
    family = renderer._families[moving]
    assert family.keys == [("a",), ("b",)]
    assert series_text(family, 1) == series_text(before, 1)  # the unchanged series' text, reused
    assert series_text(family, 0) != series_text(before, 0)
    pool_waits = renderer._families["poolwatch_pool_wait_seconds"]
    assert series_text(pool_waits, 0) != series_text(pool_waits_before, 0)
    untouched = renderer._families["poolwatch_pool_max_connections"]
    assert untouched.body is create_before.body  # a whole family reused while nothing in it changed
    engine.dispose()


class ChangingRows:
    """A scrape-time collector offering rows, whose series come, go and change at random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.gauges: dict[str, float] = {}
        self.histograms: dict[str, tuple[list[tuple[str, float]], float]] = {}
        self.gauge_spec = next(spec for spec in POOL_METRICS if spec.name == "pool_size")
        self.histogram_spec = next(spec for spec in POOL_METRICS if spec.name == "pool_wait_seconds")

    def step(self, key: str) -> None:
        action = self.rng.randrange(4)
        if action == 0:
            self.gauges[key] = self.rng.choice([0, 3, 2.5, 1e9, math.inf])
        elif action == 1:
            counts = sorted(float(self.rng.randrange(50)) for _ in self.histogram_spec.buckets or ())
            pairs = [
                (exposition.format_value(b), n)
                for b, n in zip(self.histogram_spec.buckets or (), counts, strict=True)
            ]
            pairs.append(("+Inf", counts[-1] + self.rng.randrange(3)))
            self.histograms[key] = (pairs, self.rng.random() * 100)
        else:
            self.gauges.pop(key, None)
            self.histograms.pop(key, None)

    def rows(self):
        yield Rows(self.gauge_spec, [((key, "db"), value) for key, value in self.gauges.items()])
        yield Rows(self.histogram_spec, [((key, "db"), value) for key, value in self.histograms.items()])

    def collect(self):
        for rows in self.rows():
            family: Any = rows.spec.scrape_family()
            for labels, value in rows.rows:
                if rows.spec.type == "histogram":
                    family.add_metric(list(labels), *value)
                else:
                    family.add_metric(list(labels), value)
            yield family


def test_a_renderer_kept_across_changes_writes_what_a_new_one_writes():
    # The cached families, templates and reused series must never show a stale or misplaced value:
    # after any sequence of changes, additions and removals, the text is the from-scratch text.
    rng = random.Random(20261130)
    registry = CollectorRegistry()
    counter = Counter("moving_events", "Moves.", ["k"], registry=registry)
    gauge = Gauge("moving_level", "Moves.", ["k"], registry=registry)
    histogram = Histogram("moving_seconds", "Moves.", ["k"], registry=registry, buckets=(0.1, 1.0, 10.0))
    rows = ChangingRows(rng)
    registry.register(rows)
    kept = exposition.Renderer(registry)
    renders = 0
    for _ in range(600):
        key = rng.choice(["a", "b", "c", 'd"%s\\n', "e"])
        action = rng.randrange(6)
        if action == 0:
            counter.labels(key).inc(rng.choice([1, 0.5, 2e6]))
        elif action == 1:
            gauge.labels(key).set(rng.choice([0.0, 1.5, -2.0, 1.7e9, math.inf, -math.inf, math.nan]))
        elif action == 2:
            histogram.labels(key).observe(rng.choice([0.05, 0.5, 5.0, 50.0]))
        elif action == 3:
            with contextlib.suppress(KeyError):
                rng.choice([counter, gauge, histogram]).remove(key)
        else:
            rows.step(key)
        if rng.random() < 0.4:
            renders += 1
            assert kept.render() == exposition.Renderer(registry).render()
    assert renders > 100
    assert_same_samples(kept.render().decode(), generate_latest(registry).decode())
