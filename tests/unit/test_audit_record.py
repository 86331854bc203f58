"""Audit records: the structured log line carries the fields (and never the query)."""

from __future__ import annotations

import json
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from poolwatch.config import AuditSettings
from poolwatch.logs import JsonFormatter
from poolwatch.metrics import Metrics
from poolwatch.reaper.audit import QUERY_CHARS, AuditLog, AuditRecord


def record(**overrides):
    fields: dict[str, Any] = {
        "target": "orders",
        "kind": "postgres",
        "pid": 4242,
        "username": "web",
        "database": "orders",
        "application": "web-1",
        "client_addr": "10.0.0.7",
        "state": "idle",
        "idle_seconds": 3912.4,
        "query": "ALTER ROLE x PASSWORD 'secret' " + "x" * 500,
        "backend_start": None,
        "reason": "idle",
        "mode": "enforce",
    }
    fields.update(overrides)
    return AuditRecord.make(**fields)


def test_the_query_is_truncated_and_each_record_has_its_own_id():
    first, second = record(), record()
    assert len(first.query) == QUERY_CHARS
    assert first.record_id != second.record_id


def test_a_decision_is_one_structured_log_line_and_a_counter(caplog):
    metrics = Metrics(CollectorRegistry())
    log = AuditLog(AuditSettings(), metrics.reaper)
    with caplog.at_level(logging.INFO, logger="poolwatch.reaper.audit"):
        log.record(record())
    (entry,) = caplog.records
    assert entry.getMessage() == (
        "reaper orders terminated: pid 4242 user=web database=orders application=web-1 idle=3912s (idle)"
    )
    data = json.loads(JsonFormatter().format(entry))
    assert data["event"] == "reaper_decision"
    assert (data["pid"], data["reason"], data["mode"], data["client_addr"]) == (
        4242,
        "idle",
        "enforce",
        "10.0.0.7",
    )
    assert "query" not in data
    assert "secret" not in json.dumps(data)
    labels = {"target": "orders", "reason": "idle", "mode": "enforce"}
    assert metrics.registry.get_sample_value("poolwatch_reaper_terminated_total", labels) == 1
    assert not log.enabled  # no audit.url: nothing is spooled
    assert log.flush() == 0
