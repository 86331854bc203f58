"""Reaper: time for poolwatch to find and terminate 90 idle sessions, against plain SQL doing the same.

    python -m benchmarks.reaper [--rounds 5] [--sessions 90]

Starts its own PostgreSQL and poolwatch with one target whose reaper is enabled in enforce mode
(``dry_run: false``, ``interval: 4``, ``idle_timeout: 1``, scope ``applications: [bench-idle]``,
``max_per_run`` above the session count, audit records written to a table on the same server).
Each round opens ``--sessions`` idle sessions of an ordinary role with ``application_name =
bench-idle`` just after a reaper run, and waits for them to go:

* poolwatch: the duration of the reaper run that terminated them, read back from
  ``poolwatch_job_duration_seconds{task="reaper"}`` (sampled every 250 ms, so each run is seen on
  its own): the whole job, from listing sessions through policy, terminating, audit and metrics;
* baseline, in the same round (order rotating): one ``SELECT pg_terminate_backend(pid) FROM
  pg_stat_activity WHERE ...`` statement over as many idle sessions (another application name, out
  of the reaper's scope), timed by the client.

Then the breakdown (``--breakdown-rounds``, in this process, on the same server): the reaper job
built as the daemon builds it runs over as many idle sessions, each phase of its run timed by a
wrapper around the function that does it: taking the lease, the ``pg_stat_activity`` snapshot,
the policy, the kill statement (PostgreSQL's time: the only part the hand-written statement also
has), recording and writing the audit rows. poolwatch's own share is the run less the kill statement.

Reports medians over rounds and the ratio. If this poolwatch has no reaper, it says so and exits 1
(no number is made up). Writes benchmarks/results/reaper.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2

from benchmarks import harness
from benchmarks.harness import Contender, median, spread

APPLICATION = "bench-idle"
BASELINE_APPLICATION = "bench-sql"  # outside the reaper's scope: the baseline's own sessions
WAITING = "bench-opening"  # outside it too, while the sessions are being opened
# The idle sessions belong to an ordinary role: the reaper never touches superuser sessions.
ROLE, ROLE_PASSWORD = "bench_app", "bench-app-password"
REAPER = "poolwatch_job_duration_seconds"
# How often /metrics is read while waiting: runs are 4 s apart, and each scrape costs the daemon
# CPU (and the GIL) that a faster poll would take from the very run being timed.
POLL = 0.25


def poolwatch_config(pg: Any, sessions: int) -> dict[str, Any]:
    return {
        "targets": [
            {
                "name": "pg",
                "kind": "postgres",
                "url": pg.url(),
                "reaper": {
                    "enabled": True,
                    "dry_run": False,
                    "interval": 4.0,
                    "timeout": 3.0,
                    "idle_timeout": 1.0,
                    "applications": [APPLICATION],
                    "max_per_run": sessions + 10,
                },
            }
        ],
        "audit": {"url": pg.url()},
    }


def open_idle_sessions(pg: Any, count: int, application: str = APPLICATION) -> list[Any]:
    """``count`` idle sessions named ``application``, all going idle within a few milliseconds: opened
    under another name (on a loaded machine opening 90 takes longer than a reaper interval), then
    renamed one after the other (``state_change`` is the rename's)."""
    sessions = []
    for _ in range(count):
        dsn = pg.dsn(user=ROLE, password=ROLE_PASSWORD)
        connection = psycopg2.connect(f"{dsn} application_name={WAITING}", connect_timeout=10)
        connection.autocommit = True
        sessions.append(connection)
    for connection in sessions:
        with connection.cursor() as cursor:
            cursor.execute("SET application_name = %s", (application,))
    return sessions


def alive(pg: Any) -> int:
    rows = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION,))
    return int(rows[0][0])


def close_all(sessions: list[Any]) -> None:
    for connection in sessions:
        with contextlib.suppress(psycopg2.Error):
            connection.close()


def reaper_runs(contender: Contender) -> tuple[float, float, float]:
    """(runs, seconds spent, sessions terminated) so far."""
    samples = harness.metrics(contender)
    return (
        harness.series_sum(samples, REAPER + "_count", task="reaper", target="pg"),
        harness.series_sum(samples, REAPER + "_sum", task="reaper", target="pg"),
        harness.series_sum(samples, "poolwatch_reaper_terminated_total", target="pg", mode="enforce"),
    )


def has_reaper(contender: Contender) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        samples = harness.metrics(contender)
        if any('task="reaper"' in key for key in samples):
            return True
        time.sleep(0.2)
    return False


class SplitKillError(RuntimeError):
    """A run started while the sessions were still being opened (slow on a loaded machine): it
    terminated those past the idle timeout, the next run the others. Not one run's figure."""


def poolwatch_round(contender: Contender, pg: Any, count: int, attempts: int = 3) -> float:
    """``one_poolwatch_round``, again when a run split the kill (up to ``attempts`` times)."""
    for attempt in range(1, attempts + 1):
        try:
            return one_poolwatch_round(contender, pg, count)
        except SplitKillError as exc:  # noqa: PERF203 - a retry, a few times at most
            if attempt == attempts:
                raise
            print(f"  note: {exc}; measuring again", file=sys.stderr)
    raise AssertionError("unreachable")


def one_poolwatch_round(contender: Contender, pg: Any, count: int) -> float:
    """Seconds of the reaper run that terminated the ``count`` sessions."""
    # Open them just after a run, so that all are past idle_timeout at the next one (one run, all).
    runs = reaper_runs(contender)[0]
    while reaper_runs(contender)[0] == runs:
        time.sleep(POLL)
    sessions = open_idle_sessions(pg, count)
    try:
        runs, spent, killed = reaper_runs(contender)
        deadline = time.monotonic() + 60
        while True:
            time.sleep(POLL)
            now_runs, now_spent, now_killed = reaper_runs(contender)
            if now_runs > runs and now_killed >= killed + count:
                if now_runs - runs != 1:
                    # Two runs between samples, or the kill was split: report both, honestly.
                    print(f"  note: {now_runs - runs:g} runs in one sample", file=sys.stderr)
                return now_spent - spent
            if now_runs > runs:  # a run that killed fewer (not idle long enough yet): next one
                runs, spent = now_runs, now_spent
                if now_killed > killed:
                    raise SplitKillError(f"the reaper split the kill: {now_killed - killed:g} of {count}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sessions not terminated in 60 s ({alive(pg)} left)")
    finally:
        close_all(sessions)


def baseline_round(pg: Any, count: int) -> float:
    """Client-timed: one statement terminating every idle bench session."""
    sessions = open_idle_sessions(pg, count, BASELINE_APPLICATION)
    try:
        time.sleep(1.5)  # past the 1 s idle timeout, as for the reaper
        connection = psycopg2.connect(pg.dsn(), connect_timeout=10)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                started = time.perf_counter()
                cursor.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s AND state = 'idle' AND backend_type = 'client backend' "
                    "AND state_change < now() - interval '1 second'",
                    (BASELINE_APPLICATION,),
                )
                terminated = cursor.fetchone()[0]
                elapsed = time.perf_counter() - started
        finally:
            connection.close()
        if terminated != count:
            raise RuntimeError(f"baseline terminated {terminated} of {count}")
        return elapsed
    finally:
        close_all(sessions)


PHASES = ("lease", "snapshot", "policy", "kill statement", "audit record", "audit write")


def breakdown(pg: Any, count: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per phase of in-process reaper runs over ``count`` idle sessions, per round."""
    from poolwatch.config import validate
    from poolwatch.metrics import Metrics
    from poolwatch.reaper import postgres
    from poolwatch.reaper.audit import AuditLog
    from poolwatch.reaper.job import build_postgres_reaper

    settings = validate(poolwatch_config(pg, count))
    metrics = Metrics()
    audit = AuditLog(settings.audit, metrics.reaper)
    job = build_postgres_reaper(settings.targets[0], audit, metrics.reaper)
    spent: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def timed(phase: str, func: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - started

        return wrapper

    originals = {name: getattr(postgres, name) for name in ("snapshot", "choose_victims", "terminate_all")}
    # choose_victims is poolwatch.reaper.policy's, looked up in postgres' namespace at each run.
    postgres.snapshot = timed("snapshot", originals["snapshot"])
    postgres.choose_victims = timed("policy", originals["choose_victims"])  # type: ignore[attr-defined]
    postgres.terminate_all = timed("kill statement", originals["terminate_all"])
    job.reaper.lease.hold = timed("lease", job.reaper.lease.hold)  # type: ignore[method-assign]
    audit.record_all = timed("audit record", audit.record_all)  # type: ignore[method-assign]
    audit.try_flush = timed("audit write", audit.try_flush)  # type: ignore[method-assign]
    results: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "run", "own share")}
    try:
        job.run()  # warm: the lease session, the audit table and its engine exist from here on
        for round_no in range(rounds):
            sessions = open_idle_sessions(pg, count)
            try:
                time.sleep(1.5)  # past the 1 s idle timeout
                for phase in spent:
                    spent[phase] = 0.0
                started = time.perf_counter()
                job.run()
                total = time.perf_counter() - started
                labels = {"target": "pg", "reason": "idle", "mode": "enforce"}
                killed = metrics.registry.get_sample_value("poolwatch_reaper_terminated_total", labels)
                if killed != count * (round_no + 1):
                    raise RuntimeError(f"the in-process reaper terminated {killed} sessions in all")
            finally:
                close_all(sessions)
            for phase, seconds in spent.items():
                results[phase].append(seconds * 1e3)
            results["run"].append(total * 1e3)
            results["own share"].append((total - spent["kill statement"]) * 1e3)
            print(f"breakdown round {round_no + 1}: { {k: round(v[-1], 1) for k, v in results.items()} }")
    finally:
        for name, func in originals.items():
            setattr(postgres, name, func)
        job.close()
        audit.close()
    return results


def run(rounds: int, count: int, breakdown_rounds: int = 5) -> dict[str, Any]:
    info = harness.machine()
    with harness.servers() as (pg, _redis), tempfile.TemporaryDirectory() as tmp:
        pg.create_role(ROLE, ROLE_PASSWORD)
        contender = harness.start_poolwatch(poolwatch_config(pg, count), Path(tmp))
        try:
            if not has_reaper(contender):
                return {"machine": info, "status": "missing", "sessions": count}
            times: dict[str, list[float]] = {"poolwatch": [], "sql": []}
            for round_no in range(rounds):
                for who in harness.rotate(["poolwatch", "sql"], round_no):
                    elapsed = (
                        poolwatch_round(contender, pg, count)
                        if who == "poolwatch"
                        else (baseline_round(pg, count))
                    )
                    times[who].append(elapsed)
                    print(f"round {round_no + 1} {who}: {elapsed * 1e3:.1f} ms", file=sys.stderr)
        finally:
            contender.stop()
        phases = breakdown(pg, count, breakdown_rounds) if breakdown_rounds else {}
    ratios = [a / b for a, b in zip(times["poolwatch"], times["sql"], strict=True)]
    return {
        "breakdown_ms": phases,
        "machine": info,
        "status": "measured",
        "sessions": count,
        "rounds": rounds,
        "poolwatch_ms": [t * 1e3 for t in times["poolwatch"]],
        "sql_ms": [t * 1e3 for t in times["sql"]],
        "ratio": median(ratios),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=90)
    parser.add_argument("--breakdown-rounds", type=int, default=5, help="in-process runs timed by phase")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    summary = run(args.rounds, args.sessions, args.breakdown_rounds)
    print(f"\nmachine: {summary['machine']}")
    path = harness.save_results("reaper", summary)
    if summary["status"] == "missing":
        print(
            'reaper MISSING: this poolwatch has no reaper job (no series with task="reaper" after '
            "start-up with a reaper configured), so there is nothing to time. Nothing measured.",
        )
        print("wrote", path)
        return 1
    print(f"{args.sessions} idle sessions, {args.rounds} rounds; median [min-max] over rounds")
    print(f"poolwatch reaper run: {spread(summary['poolwatch_ms'])} ms")
    print(f"one SQL statement:    {spread(summary['sql_ms'])} ms")
    print(f"poolwatch / SQL: {summary['ratio']:.2f}x")
    for phase, values in summary["breakdown_ms"].items():
        print(f"  {phase:>14}: {spread(values)} ms")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
