"""Sharding: many targets (SQLite and PostgreSQL mixed) on one poolwatch, and split over replicas.

    python -m benchmarks.shards [--targets 1000] [--replicas 4] [--rounds 2] [--tick 15] [--window 30]

Starts its own PostgreSQL; one target in ten is a PostgreSQL target (all on that server, so the
census of all of them is one reading per tick), the others SQLite files. Each round runs the whole
set on one ``poolwatch run``, then on ``--replicas`` processes given ``shard: {index, count}``
(rotating which goes first). Per setup: seconds until every target is up, then over ``--window``
seconds the CPU of all its processes per target per tick and their resident memory (largest replica
and sum), and ``--scrapes`` scrapes of each replica (p50 over all of them). Medians over rounds;
writes benchmarks/results/shards.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import spread


def targets(count: int, pg: Any, workdir: Path, tick: float) -> list[dict[str, Any]]:
    every = {"probe": {"interval": tick, "timeout": round(tick * 0.5, 3)}}
    listed = []
    for i in range(count):
        if i % 10 == 0:
            census = {"interval": tick, "timeout": round(tick * 0.5, 3)}
            listed.append(
                {"name": f"pg{i:04d}", "kind": "postgres", "url": pg.url(), "census": census, **every}
            )
        else:
            url = f"sqlite:///{workdir / f'db{i:04d}.sqlite'}"
            listed.append({"name": f"lite{i:04d}", "kind": "sqlite", "url": url, **every})
    return listed


def measure(
    listed: list[dict[str, Any]], replicas: int, workdir: Path, tick: float, window: float, scrapes: int
) -> dict[str, float]:
    started = time.monotonic()
    processes = []
    try:
        for index in range(replicas):
            config: dict[str, Any] = {"targets": listed}
            if replicas > 1:
                config["shard"] = {"index": index, "count": replicas}
            processes.append(harness.start_poolwatch(config, workdir, name=f"shard-{index}-of-{replicas}"))
        deadline = time.monotonic() + 600
        while sum(harness.series_sum(harness.metrics(p), "poolwatch_up") for p in processes) < len(listed):
            if time.monotonic() > deadline:
                raise TimeoutError("not every target came up in 600 s")
            time.sleep(0.5)
        all_up = time.monotonic() - started
        time.sleep(tick)
        cpu_before = sum(p.cpu_seconds() for p in processes)
        runs_before = sum(
            harness.series_sum(harness.metrics(p), "poolwatch_job_duration_seconds_count", task="probe")
            for p in processes
        )
        rss = [0] * replicas
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            rss = [max(r, p.rss_bytes()) for r, p in zip(rss, processes, strict=True)]
        cpu = sum(p.cpu_seconds() for p in processes) - cpu_before
        runs = (
            sum(
                harness.series_sum(harness.metrics(p), "poolwatch_job_duration_seconds_count", task="probe")
                for p in processes
            )
            - runs_before
        )
        latencies = [latency for p in processes for latency in harness.scrape_round(p, scrapes).latencies]
    finally:
        for process in processes:
            process.stop()
    return {
        "replicas": replicas,
        "seconds_to_all_up": all_up,
        "cpu_ms_per_target_tick": cpu / max(runs, 1) * 1e3,
        "rss_mb_largest": max(rss) / 2**20,
        "rss_mb_total": sum(rss) / 2**20,
        "scrape_p50_ms": harness.percentile(latencies, 50) * 1e3,
        "scrape_p99_ms": harness.percentile(latencies, 99) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tick", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    harness.exit_on_sigterm()
    info = harness.machine()
    setups = [1, args.replicas]
    results: dict[str, list[dict[str, float]]] = {str(n): [] for n in setups}
    with harness.servers() as (pg, _redis), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        listed = targets(args.targets, pg, workdir, args.tick)
        for round_no in range(args.rounds):
            for replicas in harness.rotate(setups, round_no):
                result = measure(listed, replicas, workdir, args.tick, args.window, args.scrapes)
                results[str(replicas)].append(result)
                print(f"round {round_no + 1}, {replicas} replica(s): {result}", file=sys.stderr)
    summary = {
        "machine": info,
        "command": " ".join([".venv/bin/python -m benchmarks.shards", *sys.argv[1:]]),
        "targets": args.targets,
        "rounds": args.rounds,
        "tick_s": args.tick,
        "window_s": args.window,
        "setups": results,
    }
    for replicas, rounds in results.items():
        shown = ", ".join(
            f"{key} {spread([r[key] for r in rounds])}" for key in rounds[0] if key != "replicas"
        )
        print(f"{replicas} replica(s): {shown}")
    print("wrote", harness.save_results("shards", summary))


if __name__ == "__main__":
    main()
