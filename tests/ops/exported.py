"""The metric names poolwatch exports, read from the code's own registries rather than a hand list.

``exported_names()`` builds the daemon's metrics and one target of each kind (no I/O happens: engines
and clients connect lazily, jobs only run on the scheduler) and collects the registry, then does the
same for an in-memory SQLite engine instrumented as a library (``poolwatch.instrument``). Sample names are derived from each family's type (``_total``, ``_bucket``/``_sum``/``_count``).

Nothing here is a hand list of poolwatch's names: a family renamed in the code changes this set, and
a dashboard panel or alert rule still using the old name fails its test.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch.config import validate
from poolwatch.daemon import build_target
from poolwatch.metrics import Metrics

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def sample_names(family: str, kind: str) -> set[str]:
    base = family.removesuffix("_total") if kind == "counter" else family
    return {base + suffix for suffix in SUFFIXES.get(kind, ("",))}


def _collect(registry: CollectorRegistry) -> set[tuple[str, str, str]]:
    """(family, type, sample name) of every sample name a family may expose."""
    found: set[tuple[str, str, str]] = set()
    for family in registry.collect():
        names = sample_names(family.name, family.type) | {sample.name for sample in family.samples}
        found |= {(family.name, family.type, name) for name in names}
    return found


def _daemon(state_dir: Path) -> set[tuple[str, str, str]]:
    settings = validate(
        {
            "targets": [
                {"name": "sql", "kind": "sqlite", "url": f"sqlite:///{state_dir / 'names.db'}"},
                {
                    "name": "pg",
                    "kind": "postgres",
                    "url": "postgresql+psycopg2://names@127.0.0.1:9/names",
                    "reaper": {
                        "enabled": True,
                        "dry_run": True,
                        "idle_in_transaction_timeout": 60,
                        "users": ["names"],
                    },
                },
                {"name": "kv", "kind": "redis", "url": "redis://127.0.0.1:9/0"},
                {
                    "name": "my",
                    "kind": "mysql",
                    "url": "mysql+pymysql://names@127.0.0.1:9/names",
                    "reaper": {"enabled": True, "dry_run": True, "idle_timeout": 60, "users": ["names"]},
                },
                {"name": "pgb", "kind": "pgbouncer", "url": "postgresql://names@127.0.0.1:9/pgbouncer"},
            ],
        }
    )
    metrics = Metrics(CollectorRegistry())
    runtimes = [build_target(target, metrics) for target in settings.targets]
    try:
        return _collect(metrics.registry)
    finally:
        for runtime in runtimes:
            runtime.close()


def _library() -> set[tuple[str, str, str]]:
    registry = CollectorRegistry()
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    try:
        poolwatch.instrument(engine, name="names", registry=registry, leak_threshold=60)
        return _collect(registry)
    finally:
        engine.dispose()


@cache
def _exported() -> frozenset[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="poolwatch-names-") as state_dir:
        return frozenset(_daemon(Path(state_dir)) | _library())


def real_names() -> frozenset[str]:
    """Every sample name the code exports today, daemon and library."""
    return frozenset(name for _, _, name in _exported())


def exported_families() -> frozenset[tuple[str, str]]:
    """Every family the code exports today, daemon and library, with its type."""
    return frozenset((family, kind) for family, kind, _ in _exported())


def exported_names() -> frozenset[str]:
    """What a dashboard panel or an alert rule may use."""
    return real_names()


# Series Prometheus itself attaches to every scrape (not exported by poolwatch, always present).
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
