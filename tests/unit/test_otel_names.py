"""The OpenTelemetry mapping: one entry per catalogue family, the conventions' names where they have
one; the library loads OpenTelemetry only when asked, and install() takes the global provider."""

from __future__ import annotations

import subprocess
import sys

from poolwatch.metrics import CATALOGUE, POOL_METRICS
from poolwatch.otelnames import OTEL_NAMES, POOL_NAMES, derived
from tests.unit.test_library_footprint import loaded_after

# The connection-pool instruments of the semantic conventions v1.44 (docs/db/database-metrics.md):
# name -> (instrument, unit).
CONVENTIONS = {
    "db.client.connection.count": ("UpDownCounter", "{connection}"),
    "db.client.connection.idle.max": ("UpDownCounter", "{connection}"),
    "db.client.connection.idle.min": ("UpDownCounter", "{connection}"),
    "db.client.connection.max": ("UpDownCounter", "{connection}"),
    "db.client.connection.pending_requests": ("UpDownCounter", "{request}"),
    "db.client.connection.timeouts": ("Counter", "{timeout}"),
    "db.client.connection.create_time": ("Histogram", "s"),
    "db.client.connection.wait_time": ("Histogram", "s"),
    "db.client.connection.use_time": ("Histogram", "s"),
}


def test_every_catalogue_family_has_one_distinct_opentelemetry_name() -> None:
    assert list(OTEL_NAMES) == [spec.name for spec in CATALOGUE]
    names = [otel.name for otel in OTEL_NAMES.values()]
    assert len(names) == len(set(names))
    for spec in CATALOGUE:
        assert len(OTEL_NAMES[spec.name].attributes) == len(spec.labels), spec.name


def test_pool_families_use_every_conventional_instrument_and_namespace_the_rest() -> None:
    assert set(POOL_NAMES) == {spec.name for spec in POOL_METRICS}
    conventional = {o.name: (o.instrument, o.unit) for o in POOL_NAMES.values() if o.semconv}
    assert conventional == CONVENTIONS
    for otel in POOL_NAMES.values():
        assert otel.attributes[0] == "db.client.connection.pool.name"
        assert otel.semconv == otel.name.startswith("db.client.connection.")
        assert otel.semconv or otel.name.startswith("poolwatch.")
    assert POOL_NAMES["pool_connections"].attributes[1:] == ("poolwatch.server", "db.client.connection.state")


def test_daemon_families_follow_the_naming_rule() -> None:
    by_name = {spec.name: spec for spec in CATALOGUE}
    probe = derived(by_name["probe_duration_seconds"])
    assert (probe.name, probe.instrument, probe.unit, probe.attributes) == (
        "poolwatch.probe.duration",
        "Histogram",
        "s",
        ("poolwatch.target",),
    )
    last = derived(by_name["job_last_success_timestamp_seconds"])
    assert (last.name, last.instrument, last.unit) == ("poolwatch.job.last_success_timestamp", "Gauge", "s")
    assert derived(by_name["up"]).name == "poolwatch.up"
    assert derived(by_name["pgbouncer_sent_bytes"]).unit == "By"
    assert derived(by_name["server_connections_used_ratio"]).unit == "1"


def test_import_and_instrument_load_no_opentelemetry() -> None:
    loaded = loaded_after(
        """
        import sqlalchemy
        import poolwatch
        import poolwatch.otelnames
        from prometheus_client import CollectorRegistry
        engine = sqlalchemy.create_engine("sqlite://", poolclass=sqlalchemy.pool.QueuePool)
        poolwatch.instrument(engine, name="app", registry=CollectorRegistry())
        with engine.connect():
            pass
        """
    )
    assert "opentelemetry" not in loaded


def test_a_missing_opentelemetry_is_one_line_naming_the_extra() -> None:
    blocker = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
try:
    import poolwatch.otel
except ModuleNotFoundError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == (
        "poolwatch.otel needs opentelemetry, which is not installed: pip install 'poolwatch[otel]'"
    )


def test_the_docs_mapping_table_lists_every_family_with_its_opentelemetry_name() -> None:
    from docsgen import otel_mapping

    rows = [line for line in otel_mapping.render().splitlines() if line.startswith("| `")]
    assert len(rows) == len(CATALOGUE)
    for spec, row in zip(sorted(CATALOGUE, key=lambda spec: spec.group != "pool"), rows, strict=True):
        otel = OTEL_NAMES[spec.name]
        assert row.startswith(f"| `{spec.samples[0].removesuffix('_bucket')}` | `{otel.name}`"), row
        assert f"| {otel.instrument} | `{otel.unit}` |" in row


def test_install_uses_the_global_provider_even_when_it_is_set_afterwards(tmp_path) -> None:
    script = f"""
import sqlalchemy
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import poolwatch
import poolwatch.otel

poolwatch.otel.install()  # before the application sets its provider up
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
engine = sqlalchemy.create_engine("sqlite:///{tmp_path / "g.db"}", poolclass=sqlalchemy.pool.QueuePool)
poolwatch.instrument(engine, name="global")
for _ in range(3):
    with engine.connect():
        pass
found = {{m.name: m for r in reader.get_metrics_data().resource_metrics
         for s in r.scope_metrics for m in s.metrics}}
(point,) = found["poolwatch.pool.checkouts"].data.data_points
print(dict(point.attributes)["db.client.connection.pool.name"], point.value)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["global", "3"], done.stderr
