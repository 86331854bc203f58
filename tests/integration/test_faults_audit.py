"""The audit database goes down while the daemon's reaper terminates sessions: every termination is
spooled (and counted), written once the database is back, nothing lost, and /metrics keeps answering.
(The reaper's own tests cover the spool's bound and a restart with a full spool.)"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psycopg2
import pytest

from tests.daemonkit import Scraper, metric, running_daemon, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration


def _backend_alive(pg: PostgresServer, pid: int) -> bool:
    return bool(pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)))


@pytest.mark.destructive
def test_audit_database_down_while_the_reaper_acts_loses_nothing(
    pg: PostgresServer, pg_factory: Callable[[], PostgresServer], tmp_path: Path
) -> None:
    audit_server = pg_factory()
    app = f"victim-{uuid.uuid4().hex[:6]}"
    role = f"app_{uuid.uuid4().hex[:6]}"
    pg.create_role(role, "pw")
    config = {
        "targets": [
            {
                "name": "reaped",
                "kind": "postgres",
                "url": pg.url(),
                "probe": {"interval": 0.5, "timeout": 0.5},
                "reaper": {
                    "enabled": True,
                    "dry_run": False,
                    "interval": 1,
                    "timeout": 1,
                    "idle_timeout": 0.3,
                    "applications": [f"{app}*"],
                },
            }
        ],
        "audit": {
            "url": audit_server.url(),
            "spool_path": str(tmp_path / "spool.db"),
            "connect_timeout": 2,
        },
    }
    with running_daemon(config) as daemon, Scraper(f"{daemon.base_url}/metrics") as scraper:
        wait_for(
            lambda: bool(audit_server.execute("SELECT to_regclass('poolwatch_audit')")[0][0]),
            15,
            "the audit table created by the first reaper run",
        )
        audit_server.stop()

        connections = []  # kept referenced: a collected connection would close itself, not be reaped
        for _ in range(3):
            connection = psycopg2.connect(pg.dsn(user=role, password="pw"), application_name=app)
            connection.autocommit = True
            connection.cursor().execute("SELECT 1")
            connections.append(connection)
        victims = [connection.info.backend_pid for connection in connections]
        wait_for(lambda: not any(_backend_alive(pg, pid) for pid in victims), 15, "victims terminated")
        wait_for(lambda: metric(daemon, "poolwatch_audit_spooled_records") == 3, 10, "3 records spooled")
        terminated = metric(
            daemon, "poolwatch_reaper_terminated_total", target="reaped", reason="idle", mode="enforce"
        )
        assert terminated == 3
        assert metric(daemon, "poolwatch_audit_written_total") == 0

        # A few more reaper runs against the dead audit database: still nothing lost.
        runs = metric(daemon, "poolwatch_job_duration_seconds_count", task="reaper", target="reaped")
        wait_for(
            lambda: (
                metric(daemon, "poolwatch_job_duration_seconds_count", task="reaper", target="reaped")
                >= runs + 2
            ),
            10,
            "two more reaper runs",
        )
        assert metric(daemon, "poolwatch_audit_spooled_records") == 3
        audit_server.start()
        wait_for(lambda: metric(daemon, "poolwatch_audit_spooled_records") == 0, 15, "spool flushed")
        rows = audit_server.execute("SELECT pid FROM poolwatch_audit WHERE application = %s", (app,))
        assert sorted(pid for (pid,) in rows) == sorted(victims)
        assert metric(daemon, "poolwatch_audit_written_total") == 3
        assert metric(daemon, "poolwatch_audit_dropped_records_total") == 0
    scraper.assert_served()
