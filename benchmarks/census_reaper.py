"""How long a census and a dry-run reaper run take as the server's session count grows.

Starts its own PostgreSQL (tests.servers), opens N idle client sessions, and times, in interleaved
rounds, the census ``take()`` (one pg_stat_activity query + aggregation) and one dry-run reaper run
(lease check, snapshot, policy). Prints medians per N. Usage:

    .venv/bin/python -m benchmarks.census_reaper [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import psycopg2
from prometheus_client import CollectorRegistry

from poolwatch.census import postgres as pg_census
from poolwatch.config import validate
from poolwatch.database import Database
from poolwatch.metrics import Metrics
from poolwatch.reaper.audit import AuditLog
from poolwatch.reaper.job import build_postgres_reaper
from poolwatch.reaper.own import OwnBackends
from tests.servers import PostgresServer

SIZES = (10, 100, 250)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    server = PostgresServer().start()
    sessions: list[Any] = []
    try:
        settings = validate(
            {
                "targets": [
                    {
                        "name": "bench",
                        "kind": "postgres",
                        "url": server.url(),
                        "reaper": {"enabled": True, "idle_timeout": 3600, "applications": ["bench-*"]},
                    }
                ]
            }
        )
        target = settings.targets[0]
        database = Database.from_target(target)
        take = pg_census.census(target, database.engine, pg_census.known_pools(target))
        metrics = Metrics(CollectorRegistry())
        job = build_postgres_reaper(
            target, AuditLog(settings.audit, metrics.reaper), metrics.reaper, OwnBackends()
        )
        print(f"rounds={rounds}; medians in milliseconds")
        print(f"{'sessions':>8}  {'census':>8}  {'reaper (dry run)':>16}")
        for size in SIZES:
            while len(sessions) < size:
                connection = psycopg2.connect(server.dsn(), application_name=f"bench-{len(sessions)}")
                connection.autocommit = True
                sessions.append(connection)
            census_times, reaper_times = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                take()
                census_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                job.run()
                reaper_times.append(time.perf_counter() - started)
            print(
                f"{size:>8}  {statistics.median(census_times) * 1000:>8.2f}  "
                f"{statistics.median(reaper_times) * 1000:>16.2f}"
            )
        job.close()
        database.dispose()
    finally:
        for connection in sessions:
            connection.close()
        server.destroy()


if __name__ == "__main__":
    main()
