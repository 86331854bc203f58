"""Status documents for tests that render them: one healthy target, changed where a test needs it."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

from poolwatch.assess import health, rank

if TYPE_CHECKING:
    from poolwatch.status import CountsDoc, StatusDoc, TargetDoc

NOW = 1_750_000_000.0


def target(name: str = "orders", **changes: Any) -> TargetDoc:
    """A healthy PostgreSQL target with a pool, a census, a dry-run reaper and a few trend samples;
    ``changes`` replace top-level keys (nested dicts are merged one level deep)."""
    doc: dict[str, Any] = {
        "name": name,
        "kind": "postgres",
        "url": f"postgresql+psycopg2://web:***@db:5432/{name}",
        "health": "ok",
        "problems": [],
        "up": True,
        "since": NOW - 3600,
        "checked_at": NOW - 2,
        "latency_seconds": 0.0012,
        "error": "",
        "reason": "",
        "backoff_seconds": 0.0,
        "pool": {
            "used": 2,
            "idle": 3,
            "max": 15,
            "size": 5,
            "overflow": 0,
            "pending": 0,
            "timeouts_recent": 0,
            "timeouts_total": 0,
            "leaked": 0,
            "leaks_recent": 0,
            "leaks_total": 0,
            "checkout_timeout_seconds": 30.0,
            "leak_threshold_seconds": 60.0,
        },
        "census": {
            "taken_at": NOW - 5,
            "sessions": 12,
            "by_state": {"active": 2, "idle": 10},
            "max_connections": 97,
            "used_ratio": 12 / 97,
            "oldest_seconds": {"active": 0.5, "idle": 40.0, "idle in transaction": 0.0},
            "oldest_idle_in_transaction": None,
        },
        "reaper": {
            "mode": "dry_run",
            "lease_held": True,
            "idle_timeout_seconds": 3600.0,
            "idle_in_transaction_timeout_seconds": 300.0,
            "max_per_run": 20,
            "latest": [],
            "candidates": [],
            "candidates_total": 0,
        },
        "jobs": [
            {
                "task": task,
                "interval_seconds": 15.0,
                "last_run": NOW - 3,
                "last_success": NOW - 3,
                "failures": 0,
                "failing_for": 0,
                "last_error": "",
            }
            for task in ("census", "probe", "reaper")
        ],
        "trend": {
            "window_seconds": 900.0,
            "step_seconds": 10.0,
            "at": [NOW - 30, NOW - 20, NOW - 10],
            "used": [1.0, 4.0, 2.0],
            "pending": [0.0, 1.0, 0.0],
            "timeouts": [0.0, 0.0, 0.0],
            "leaks": [0.0, 0.0, 0.0],
            "sessions_at": [NOW - 25, NOW - 10],
            "sessions": [10.0, 12.0],
        },
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    # Built key by key from arbitrary changes: a TargetDoc only by construction.
    return cast("TargetDoc", copy.deepcopy(doc))


def document(*targets: TargetDoc) -> StatusDoc:
    """A whole document; each target's health is recomputed from its problems, and sorted."""
    docs = []
    for given in targets:
        t = copy.deepcopy(given)
        t["health"] = health(t)
        docs.append(t)
    docs.sort(key=rank)
    counts: CountsDoc = {"critical": 0, "warning": 0, "unknown": 0, "ok": 0}
    for t in docs:
        counts[t["health"]] += 1
    return {
        "schema_version": 1,
        "version": "0.1.0",
        "source": "file /etc/poolwatch.yaml",
        "generated_at": NOW,
        "healthy": True,
        "counts": counts,
        "targets": docs,
    }
