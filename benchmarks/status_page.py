"""How long the status page and /status take at 100 targets, and what a job outcome costs to prepare them.

A real ``Daemon`` with 100 targets (70 PostgreSQL with census and a dry-run reaper, 30 Redis with a
census) is built and started (its HTTP endpoint listens; its jobs are not scheduled, so nothing
connects anywhere), and every piece of state the page reads is filled through the same calls the
scheduler makes: probe outcomes, censuses of 60 sessions each through the census job, reaper
candidates and decisions, job statistics, and 15 minutes of trend samples. Then each round times,
in a rotating order:

- ``document``: the /status document, between two job outcomes;
- ``render``: the page from it; ``json``: the JSON from it; ``json_after_samples``: the same right
  after every target's probe recorded an outcome;
- ``get_page``: a whole ``GET /`` through the WSGI endpoint, between two job outcomes;
- ``get_page_after_samples``: the same right after every target's probe recorded an outcome (so
  every target has a new sample and every card changed);
- ``get_page_all_down``: the same while every target is down;
- ``observe``: recording one probe outcome for every target, as the scheduler's threads do (the
  part of the status's work done there, off the request path);
- ``reference``: a fixed pure-Python loop, so that runs on differently loaded machines compare by
  their ratio to it.

With ``--baseline REV`` a second daemon, filled the same way, runs the status code (``history``,
``status``, ``statuspage`` and the daemon's status function) of git revision REV, and every
contender is timed for both in the same rounds: the ratio new/baseline is taken within each round.
Medians over the rounds of wall time and the thread's CPU time (less disturbed by other processes on
a shared machine). Prints the results as JSON (``--save``: also to benchmarks/results/status_page.json).

    python -m benchmarks.status_page [--targets 100] [--rounds 300] [--baseline main] [--save]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from benchmarks.harness import save_results
from poolwatch import statuspage
from poolwatch._version import __version__
from poolwatch.census import postgres as pg_census
from poolwatch.census import redis as redis_census
from poolwatch.census.job import CensusJob
from poolwatch.census.labels import Bounds
from poolwatch.config import validate
from poolwatch.daemon import Daemon
from poolwatch.history import BYTES, SLOTS
from poolwatch.jobs import Outcome
from poolwatch.reaper.audit import AuditRecord, Candidates
from poolwatch.reaper.job import ReaperJob
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Callable

    from poolwatch.jobs import Job


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


@dataclass
class Contender:
    """One implementation's daemon and the functions that answer for it."""

    daemon: Daemon
    status: Callable[[], Any]
    respond: Callable[..., list[bytes]]
    render: Callable[[Any], str]
    to_json: Callable[[Any], str]

    def probes(self) -> list[Job]:
        return [
            job
            for name in sorted(self.daemon._targets)
            for job in self.daemon.runtime(name).jobs
            if job.task == "probe"
        ]

    def record(self, error: BaseException | None = None) -> None:
        """A probe outcome for every target, as the scheduler records one."""
        now = time.time()
        for job in self.probes():
            self.daemon._scheduler._record(job, Outcome(0.002, now, error))

    def get_page(self) -> None:
        seen: list[str] = []
        environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
        self.respond(environ, lambda status, _headers: seen.append(status), self.status)


def _current(targets: int) -> Contender:
    daemon = Daemon(validate(_config(targets)))
    daemon.start()
    _fill(daemon, time.time())
    return Contender(daemon, daemon.status, statuspage.respond, statuspage.render, statuspage.to_json)


def _baseline(targets: int, revision: str) -> Contender:
    """A daemon running the status code of ``revision``: its history, document and page modules,
    and its daemon's status function (which made every target's part per request)."""
    old = {name: _load(revision, name) for name in ("history", "status", "statuspage")}
    daemon = Daemon(validate(_config(targets)), history=old["history"].History)

    def observe(job: Job, _outcome: Outcome, _stats: Any) -> None:
        runtime, tracker = daemon._targets.get(job.target), daemon._trackers.get(job.target)
        if runtime is not None and tracker is not None:
            tracker.observe(job, runtime.instrumentation, time.time())

    daemon._scheduler._on_record = observe

    def status() -> Any:
        with daemon._targets_lock:
            runtimes = [(runtime, daemon._trackers[name]) for name, runtime in daemon._targets.items()]
        stats = daemon._scheduler.stats()
        sources = [
            old["status"].Sources(
                settings=runtime.settings,
                probe=runtime.probe.result(),
                pool=runtime.instrumentation,
                jobs=runtime.jobs,
                stats=stats.get(runtime.settings.name, {}),
                decisions=daemon.audit.latest(runtime.settings.name),
                tracker=tracker,
            )
            for runtime, tracker in runtimes
        ]
        return old["status"].document(
            sources,
            version=__version__,
            source=daemon.settings.source,
            healthy=daemon.healthy(),
            now=time.time(),
        )

    daemon.start()
    _fill(daemon, time.time())
    old_json = functools.partial(json.dumps, separators=(",", ":"))
    return Contender(daemon, status, old["statuspage"].respond, old["statuspage"].render, old_json)


def _load(revision: str, name: str) -> ModuleType:
    """``poolwatch/<name>.py`` of ``revision`` as a module of its own (its imports are today's)."""
    path = f"poolwatch/{name}.py"
    source = subprocess.run(
        ["git", "show", f"{revision}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    module = ModuleType(f"baseline_{name}")
    module.__file__ = f"{revision}:{path}"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # the repository's own code
    return module


def _commit(revision: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", revision], capture_output=True, text=True, check=True
    ).stdout.strip()


def _contenders(c: Contender) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (setup, timed): the setup brings the daemon to the state the name says."""
    state: dict[str, Any] = {}

    def ready() -> None:
        c.record()
        c.get_page()
        state["doc"] = c.status()
        c.to_json(state["doc"])

    def sampled() -> None:
        c.record()
        state["doc"] = c.status()

    def down() -> None:
        c.record(ConnectionRefusedError("connection refused"))

    nothing = lambda: None  # noqa: E731
    return {
        "document": (ready, c.status),
        "render": (ready, lambda: c.render(state["doc"])),
        "json": (ready, lambda: c.to_json(state["doc"])),
        "json_after_samples": (sampled, lambda: c.to_json(state["doc"])),
        "get_page": (ready, c.get_page),
        "get_page_after_samples": (c.record, c.get_page),
        "get_page_all_down": (down, c.get_page),
        "observe": (nothing, c.record),
        "reference": (nothing, lambda: sum(i * i for i in range(100_000))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--baseline", metavar="REV", help="also time the status code of this git revision")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/status_page.json")
    parser.add_argument("--only", help="time one contender only (for instruction counts under callgrind)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the audit log's INFO lines per decision
    load_at_start = os.getloadavg()[0]
    implementations = {"current": _current(args.targets)}
    if args.baseline:
        implementations["baseline"] = _baseline(args.targets, args.baseline)
    try:
        current = implementations["current"]
        current.record()
        doc = current.status()
        page = current.render(doc).encode()
        body = current.to_json(doc).encode()
        runs = {
            (impl, name): pair
            for impl, contender in implementations.items()
            for name, pair in _contenders(contender).items()
            if not args.only or name in {args.only, "reference"}
        }
        if args.baseline:
            del runs[("baseline", "reference")]
        keys = list(runs)
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in keys}
        for round_ in range(args.rounds):
            for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]:
                setup, timed = runs[key]
                setup()
                # Collections owed to the setup's garbage are not the timed call's: each starts afresh.
                gc.collect()
                samples[key].append(_timed(timed))
        reference = samples[("current", "reference")]
        results: dict[str, dict[str, Any]] = {}
        for (impl, name), values in samples.items():
            results.setdefault(name, {})[impl] = {
                "wall_ms_median": round(statistics.median(w for w, _ in values) * 1000, 3),
                "cpu_ms_median": round(statistics.median(c for _, c in values) * 1000, 3),
                # CPU time over the reference loop's in the same round: comparable across machines.
                "cpu_ratio_to_reference": round(
                    statistics.median(c / r for (_, c), (_, r) in zip(values, reference, strict=True)), 3
                ),
            }
            if impl == "current" and ("baseline", name) in samples:
                before = samples[("baseline", name)]
                results[name]["cpu_ratio_current_to_baseline"] = round(
                    statistics.median(c / b for (_, c), (_, b) in zip(values, before, strict=True)), 3
                )
    finally:
        for contender in implementations.values():
            contender.daemon.stop()
            contender.daemon._close()
    report = {
        "benchmark": "status_page",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python -m benchmarks.status_page", *sys.argv[1:]]),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(load_at_start, 2),
        },
        "targets": args.targets,
        "rounds": args.rounds,
        "baseline": args.baseline,
        "baseline_commit": _commit(args.baseline) if args.baseline else None,
        "page_bytes": len(page),
        "json_bytes": len(body),
        "history_bytes_per_target": BYTES,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.save:
        print("wrote", save_results("status_page", report))


if __name__ == "__main__":
    main()
