"""The metric catalogue is the one definition of every family: what is exported is what it lists."""

from __future__ import annotations

import sqlalchemy
from prometheus_client import CollectorRegistry

import poolwatch
from poolwatch.metrics import CATALOGUE, PGBOUNCER_METRICS, POOL_METRICS, Metrics


def exported(tmp_path) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """name -> (type, help, label names) of every family a daemon and an instrumented pool export."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.probe.add_target("t")
    metrics.jobs.add_job("probe", "t")
    metrics.reaper.add_target("t")
    for spec in metrics.census.families.values():
        spec.labels(*(["x"] * len(spec._labelnames))).set(1)
    metrics.pgbouncer.publish(
        "t", [(spec.name, ("x",) * (len(spec.labels) - 1), 1.0) for spec in PGBOUNCER_METRICS]
    )
    metrics.targets.add_target("t", "postgres")
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    poolwatch.instrument(engine, name="p", registry=registry)
    families = {}
    for family in registry.collect():
        labels = {name for sample in family.samples for name in sample.labels if name != "le"}
        families[family.name] = (family.type, family.documentation, tuple(sorted(labels)))
    engine.dispose()
    return families


def test_every_exported_family_is_in_the_catalogue_as_exported(tmp_path) -> None:
    families = exported(tmp_path)
    catalogue = {spec.full_name: (spec.type, spec.help, tuple(sorted(spec.labels))) for spec in CATALOGUE}
    assert families == catalogue


def test_catalogue_names_are_unique_and_each_spec_lists_its_samples() -> None:
    names = [spec.full_name for spec in CATALOGUE]
    assert len(names) == len(set(names))
    assert {spec.group for spec in CATALOGUE} == {
        "build",
        "pool",
        "probe",
        "job",
        "census",
        "reaper",
        "audit",
        "pgbouncer",
        "target",
    }
    assert set(POOL_METRICS) <= set(CATALOGUE)
    checkouts = next(spec for spec in CATALOGUE if spec.name == "pool_checkouts")
    assert checkouts.samples == ("poolwatch_pool_checkouts_total",)
    wait = next(spec for spec in CATALOGUE if spec.name == "pool_wait_seconds")
    assert wait.unit == "seconds"
    assert wait.samples[0] == "poolwatch_pool_wait_seconds_bucket"
    assert all(spec.buckets for spec in CATALOGUE if spec.type == "histogram")


def test_the_metrics_reference_lists_the_label_values_a_pool_starts_with(tmp_path) -> None:
    from docsgen.metrics_reference import START_VALUES

    registry = CollectorRegistry()
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'v.db'}")
    poolwatch.instrument(engine, name="p", registry=registry)
    live: dict[tuple[str, str], set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label not in ("pool", "server", "holder", "le"):
                    live.setdefault((family.name.removeprefix("poolwatch_"), label), set()).add(value)
    engine.dispose()
    assert {key: set(values) for key, values in START_VALUES.items()} == live
