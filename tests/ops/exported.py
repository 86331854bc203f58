"""The metric names poolwatch exports, read from the code's own registries rather than a hand list.

``exported_names()`` builds the daemon's metrics and one target of each kind (no I/O happens: engines
and clients connect lazily, jobs only run on the scheduler) and collects the registry; when
``poolwatch.instrument`` exists it also instruments an in-memory SQLite engine and collects what that
adds. Sample names are derived from each family's type (``_total``, ``_bucket``/``_sum``/``_count``).

PENDING holds the contract names (BRIEF.md) of metric groups other issues are still building. A
group's contract names are used only while the real registry shows none of that group's prefixes:
the moment the code exports one ``poolwatch_pool_*`` family, every pool name comes from the code, and
a dashboard or rule using a name the code does not export fails. A landed group's PENDING entry is
ignored from then on and can be deleted; the end-to-end test names every query it could not run
against real data because its group is still pending.
"""

from __future__ import annotations

import inspect
import tempfile
from functools import cache
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry
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

# group -> (name prefixes that mark the group as landed, {family: type} from the contract)
PENDING: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "pool": (
        ("poolwatch_pool_", "poolwatch_instrumentation_"),
        {
            "poolwatch_pool_connections": "gauge",
            "poolwatch_pool_max_connections": "gauge",
            "poolwatch_pool_size": "gauge",
            "poolwatch_pool_min_idle": "gauge",
            "poolwatch_pool_overflow": "gauge",
            "poolwatch_pool_pending_requests": "gauge",
            "poolwatch_pool_wait_seconds": "histogram",
            "poolwatch_pool_use_seconds": "histogram",
            "poolwatch_pool_create_seconds": "histogram",
            "poolwatch_pool_checkouts": "counter",
            "poolwatch_pool_timeouts": "counter",
            "poolwatch_pool_connect_errors": "counter",
            "poolwatch_pool_closed": "counter",
            "poolwatch_pool_leaked_connections": "gauge",
            "poolwatch_pool_leaks": "counter",
            "poolwatch_instrumentation_errors": "counter",
        },
    ),
    "census": (
        ("poolwatch_server_",),
        {
            "poolwatch_server_connections": "gauge",
            "poolwatch_server_pool_connections": "gauge",
            "poolwatch_server_max_connections": "gauge",
            "poolwatch_server_connections_used_ratio": "gauge",
            "poolwatch_server_oldest_seconds": "gauge",
            "poolwatch_server_oldest_transaction_seconds": "gauge",
            "poolwatch_server_idle_connections": "gauge",
        },
    ),
    "reaper": (
        ("poolwatch_reaper_", "poolwatch_audit_"),
        {
            "poolwatch_reaper_terminated": "counter",
            "poolwatch_reaper_errors": "counter",
            "poolwatch_reaper_leader": "gauge",
            "poolwatch_audit_spooled_records": "gauge",
            "poolwatch_audit_dropped_records": "counter",
            "poolwatch_audit_written": "counter",
        },
    ),
}


def sample_names(family: str, kind: str) -> set[str]:
    base = family.removesuffix("_total") if kind == "counter" else family
    return {base + suffix for suffix in SUFFIXES.get(kind, ("",))}


def _collect(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names |= sample_names(family.name, family.type)
        names |= {sample.name for sample in family.samples}
    return names


def _daemon_names(state_dir: Path) -> set[str]:
    settings = validate({
        "targets": [
            {"name": "sql", "kind": "sqlite", "url": f"sqlite:///{state_dir / 'names.db'}"},
            {"name": "pg", "kind": "postgres", "url": "postgresql+psycopg2://names@127.0.0.1:9/names",
             "reaper": {"enabled": True, "dry_run": True, "idle_in_transaction_timeout": 60,
                        "users": ["names"]}},
            {"name": "kv", "kind": "redis", "url": "redis://127.0.0.1:9/0"},
        ],
    })  # fmt: skip
    metrics = Metrics(CollectorRegistry())
    runtimes = [build_target(target, metrics) for target in settings.targets]
    try:
        return _collect(metrics.registry)
    finally:
        for runtime in runtimes:
            runtime.close()


def _library_names() -> set[str]:
    instrument = getattr(poolwatch, "instrument", None)
    if instrument is None:
        return set()
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    try:
        if "registry" in inspect.signature(instrument).parameters:
            registry = CollectorRegistry()
            instrument(engine, name="names", registry=registry)
            return _collect(registry)
        before = _collect(REGISTRY)
        instrument(engine, name="names")
        return _collect(REGISTRY) - before
    finally:
        engine.dispose()


@cache
def real_names() -> frozenset[str]:
    """Every sample name the code exports today, daemon and library."""
    with tempfile.TemporaryDirectory(prefix="poolwatch-names-") as state_dir:
        return frozenset(_daemon_names(Path(state_dir)) | _library_names())


def pending_groups() -> dict[str, set[str]]:
    """Contract names of the groups that have not landed in the code yet."""
    real = real_names()
    pending: dict[str, set[str]] = {}
    for group, (prefixes, families) in PENDING.items():
        if any(name.startswith(prefixes) for name in real):
            continue
        pending[group] = set().union(*(sample_names(f, kind) for f, kind in families.items()))
    return pending


def exported_names() -> frozenset[str]:
    """What a dashboard or rule may use: the real names, plus the contract's for groups not landed."""
    names = set(real_names())
    for group_names in pending_groups().values():
        names |= group_names
    return frozenset(names)


# Series Prometheus itself attaches to every scrape (not exported by poolwatch, always present).
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
