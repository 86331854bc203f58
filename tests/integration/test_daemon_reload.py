"""A SIGHUP that rebuilds targets: their counters count on from where they were, and only the series
of a target that is gone go away (a real ``poolwatch run`` process, read over /metrics)."""

from __future__ import annotations

import signal
import uuid
from typing import TYPE_CHECKING, Any

import psycopg2
import pytest
import yaml

from tests.daemonkit import DaemonProcess, clean_env
from tests.servers import LOOPBACK, free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# Sample names that only ever grow: counters, and the count, sum and buckets of histograms.
MONOTONIC = ("_total", "_count", "_sum", "_bucket")


def samples(run: DaemonProcess) -> Samples:
    return {(name, frozenset(labels.items())): value for name, labels, value in run.samples()}


def one(found: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    values = [v for (n, ls), v in found.items() if n == name and wanted <= ls]
    return values[0] if len(values) == 1 else -1.0


def reloads(run: DaemonProcess) -> int:
    return sum("configuration reloaded" in line for line in run.lines)


def test_a_reload_that_rebuilds_targets_keeps_their_counters_counting(
    pg: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    app = f"reload-{uuid.uuid4().hex[:6]}"
    role = f"app_{uuid.uuid4().hex[:6]}"
    pg.create_role(role, "pw")
    audit_db = f"audit_{uuid.uuid4().hex[:6]}"
    pg.create_database(audit_db)
    refused = f"postgresql://u@{LOOPBACK}:{free_port()}/x"  # nothing listens: probes fail, refused

    def config(interval: float, *, leaving: bool) -> dict[str, Any]:
        probe = {"interval": interval, "timeout": 0.3}
        reaper = {
            "enabled": True,
            "dry_run": False,
            "interval": interval,
            "timeout": interval,
            "idle_timeout": 0.1,
            "applications": [f"{app}*"],
        }
        targets = [
            {"name": "orders", "kind": "postgres", "url": pg.url(), "probe": probe, "reaper": reaper},
            {"name": "down", "kind": "postgres", "url": refused, "probe": probe},
            # Unchanged, but its census knows the pools on its server, "leaving" among them.
            {
                "name": "cache",
                "kind": "redis",
                "url": redis_server.url(),
                "probe": {"interval": 0.3, "timeout": 0.3},
            },
        ]
        if leaving:
            targets.append({"name": "leaving", "kind": "redis", "url": redis_server.url(), "probe": probe})
        return {"targets": targets, "audit": {"url": pg.url(database=audit_db)}}

    path = tmp_path / "poolwatch.yaml"
    path.write_text(yaml.safe_dump(config(0.3, leaving=True)))
    victims = [psycopg2.connect(pg.dsn(user=role, password="pw"), application_name=app) for _ in range(3)]
    try:
        with DaemonProcess(["--config", str(path)], clean_env()) as run:

            def counted() -> bool:
                found = samples(run)
                return (
                    one(
                        found,
                        "poolwatch_reaper_terminated_total",
                        target="orders",
                        mode="enforce",
                        reason="idle",
                    )
                    == 3
                    and one(found, "poolwatch_probe_failures_total", target="down", reason="refused") >= 5
                    and one(found, "poolwatch_pool_checkouts_total", pool="orders") >= 5
                    and one(found, "poolwatch_pool_checkouts_total", pool="cache") >= 5
                    and one(found, "poolwatch_up", target="leaving") == 1
                )

            run.wait(counted, "counters of every target above zero")
            before = {key: v for key, v in samples(run).items() if key[0].endswith(MONOTONIC)}
            # Every target but "cache" changes (so it is rebuilt), and one target goes.
            path.write_text(yaml.safe_dump(config(0.35, leaving=False)))
            run.process.send_signal(signal.SIGHUP)
            run.wait(lambda: reloads(run) == 1, "reloaded")
            after = samples(run)
            kept = [
                key for key in before if dict(key[1]).get("target", dict(key[1]).get("pool")) != "leaving"
            ]
            went_down = {
                key: (before[key], after.get(key)) for key in kept if after.get(key, -1) < before[key]
            }
            assert not went_down, went_down
            assert (
                one(
                    after, "poolwatch_reaper_terminated_total", target="orders", mode="enforce", reason="idle"
                )
                == 3
            )
            # The target that went takes its series along, those of other targets' census included
            # (re-published by the census of the rebuilt "cache" when it runs).
            run.wait(lambda: not [key for key in samples(run) if "leaving" in dict(key[1]).values()])
            assert run.stop() == 0
    finally:
        for connection in victims:
            connection.close()
