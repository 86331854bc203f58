"""How long the status page and /status take at 100 targets: the document, the HTML, the JSON.

A real ``Daemon`` with 100 targets (70 PostgreSQL with census and a dry-run reaper, 30 Redis with a
census) is built and started (its HTTP endpoint listens; its jobs are not scheduled, so nothing
connects anywhere), and every piece of state the page reads is filled through the same calls the
scheduler makes: probe outcomes, censuses of 60 sessions each through the census job, reaper
candidates and decisions, job statistics, and 15 minutes of trend samples. Then each round times,
in a rotating order: building the document, rendering the page from it (sparklines cached, as
between two samples), rendering it with the sparkline cache emptied (right after every target got a
sample), and serialising the JSON; and a whole ``GET /`` through the WSGI endpoint. Medians over the
rounds, wall time and the thread's CPU time (less disturbed by other processes on a shared machine),
and the same for a fixed pure-Python reference loop, so that runs on differently loaded machines
compare by their ratio to it. Prints the results as JSON.

    python -m benchmarks.status_page [--targets 100] [--rounds 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import time
from typing import TYPE_CHECKING, Any

from poolwatch import statuspage
from poolwatch.census import postgres as pg_census
from poolwatch.census import redis as redis_census
from poolwatch.census.job import CensusJob
from poolwatch.census.labels import Bounds
from poolwatch.config import validate
from poolwatch.daemon import Daemon
from poolwatch.history import BYTES, SLOTS
from poolwatch.jobs import Outcome
from poolwatch.memo import SlotCache
from poolwatch.reaper.audit import AuditRecord, Candidates
from poolwatch.reaper.job import ReaperJob
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Callable


class CannedCensus(pg_census.PostgresCensus):
    """A PostgreSQL census taken from rows made here, through the real summary code."""

    def __init__(self, rows: list[pg_census.Activity]) -> None:
        self.rows = rows
        self.oldest_idle_in_transaction = None

    def __call__(self) -> list[Any]:
        self.oldest_idle_in_transaction = pg_census.oldest_idle_in_transaction(self.rows)
        bounds = Bounds(frozenset({"orders"}), frozenset({"web"}), frozenset({"web-1"}))
        return pg_census.samples(self.rows, 200, bounds, {"web-1": "orders"}, (60.0, 300.0, 3600.0))


def _config(targets: int) -> dict[str, Any]:
    dead = free_port()
    reaper = {"enabled": True, "idle_timeout": 3600, "applications": ["web-*"]}
    postgres = [
        {
            "name": f"pg-{i}",
            "kind": "postgres",
            "url": f"postgresql://web@127.0.0.1:{dead}/db{i}",
            "reaper": reaper,
        }
        for i in range(targets * 7 // 10)
    ]
    redis = [
        {"name": f"redis-{i}", "kind": "redis", "url": f"redis://127.0.0.1:{dead}/0"}
        for i in range(targets - len(postgres))
    ]
    return {"http": {"listen": "127.0.0.1:0"}, "targets": postgres + redis}


def _fill(daemon: Daemon, now: float) -> None:
    """Every piece of state the page shows, through the calls the scheduler makes."""
    scheduler = daemon._scheduler
    for index, name in enumerate(sorted(daemon._targets)):
        runtime = daemon.runtime(name)
        tracker = daemon._trackers[name]
        for step in range(SLOTS):
            at = now - 900 + 10 * step
            tracker.history.add_pool(
                at, used=(index + step) % 12, pending=int(step % 3 == 0), timeouts=0, leaks=0
            )
            tracker.history.add_sessions(at, 40 + (step * 7) % 20)
        for job in runtime.jobs:
            error = ConnectionRefusedError("connection refused") if index % 25 == 0 else None
            if isinstance(job, CensusJob):
                job.take = _take(runtime.settings.kind, index)
                job.run()
            if isinstance(job, ReaperJob):
                records = [_record(name, pid) for pid in range(10)]
                job.reaper.candidates = Candidates(tuple(records[:3]), 12)
                for record in records:
                    daemon.audit.record(record)
            scheduler._record(job, Outcome(0.002, now - 1, error))


def _take(kind: str, index: int) -> Callable[[], list[Any]]:
    if kind == "redis":
        clients = [
            redis_census.parse_client(
                {"id": i, "addr": f"10.0.0.{i}:5000", "name": "web-1", "idle": i, "flags": "N"}
            )
            for i in range(60)
        ]
        bounds = Bounds(applications=frozenset({"web-1"}))
        info = {"maxclients": 10000, "connected_clients": 60}
        return lambda: redis_census.samples(clients, info, bounds, {"web-1": "redis"}, (60.0, 300.0))
    states = ("active", "idle", "idle", "idle", "idle in transaction")
    rows = [
        pg_census.Activity(
            states[i % 5], "orders", "web", f"web-{i % 3}", float(i + index), float(i), 1000 + i
        )
        for i in range(60)
    ]
    return CannedCensus(rows)


def _record(target: str, pid: int) -> AuditRecord:
    return AuditRecord.make(
        target=target,
        kind="postgres",
        pid=4000 + pid,
        username="web",
        database="orders",
        application="web-1",
        client_addr="10.0.0.7",
        state="idle",
        idle_seconds=3700.0 + pid,
        query="SELECT 1",
        backend_start=None,
        reason="idle",
        mode="dry_run",
    )


def _timed(function: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    function()
    return time.perf_counter() - wall, time.thread_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--only", help="time one contender only (for instruction counts under callgrind)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the audit log's INFO lines per decision
    daemon = Daemon(validate(_config(args.targets)))
    daemon.start()
    try:
        now = time.time()
        _fill(daemon, now)
        doc = daemon.status()
        page = statuspage.render(doc).encode()
        body = json.dumps(doc, separators=(",", ":")).encode()

        def get_page() -> None:
            seen: list[str] = []
            environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
            statuspage.respond(environ, lambda status, _headers: seen.append(status), daemon.status)

        def render_cold() -> None:
            # As right after every target got a sample: no sparkline cached (the others' cache kept).
            warm, statuspage._FIGURES = statuspage._FIGURES, SlotCache()
            try:
                statuspage.render(doc)
            finally:
                statuspage._FIGURES = warm

        contenders: dict[str, Callable[[], Any]] = {
            "document": daemon.status,
            "render": lambda: statuspage.render(doc),
            "render_uncached": render_cold,
            "json": lambda: json.dumps(doc, separators=(",", ":")),
            "get_page": get_page,
            "reference": lambda: sum(i * i for i in range(100_000)),
        }
        names = [args.only] if args.only else list(contenders)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                samples[name].append(_timed(contenders[name]))
        reference = samples.get("reference")
        results = {
            name: {
                "wall_ms_median": round(statistics.median(w for w, _ in values) * 1000, 3),
                "cpu_ms_median": round(statistics.median(c for _, c in values) * 1000, 3),
                # CPU time over the reference loop's in the same round: comparable across machines.
                **(
                    {
                        "cpu_ratio_to_reference": round(
                            statistics.median(
                                c / r for (_, c), (_, r) in zip(values, reference, strict=True)
                            ),
                            3,
                        )
                    }
                    if reference
                    else {}
                ),
            }
            for name, values in samples.items()
        }
    finally:
        daemon.stop()
        daemon._close()
    report = {
        "benchmark": "status_page",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
        "targets": args.targets,
        "rounds": args.rounds,
        "page_bytes": len(page),
        "json_bytes": len(body),
        "history_bytes_per_target": BYTES,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
