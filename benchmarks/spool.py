"""Audit spool: the cost of one append with 1,000, 10,000 and 100,000 records already waiting.

    python -m benchmarks.spool [--rounds 5] [--appends 100] [--sizes 1000 10000 100000]

For each size a spool file is filled once (the JSON-lines migration writes it in one transaction);
each round then reopens every store, in a rotating order, and appends ``--appends`` records to it,
measuring per append: wall time (dominated by the fsync of each commit), CPU time of the process,
and bytes handed to ``write()`` (``wchar`` in /proc/self/io). The appended records are removed
again at the end of the round, so every round sees the same size. Reports medians over rounds and,
per round, each size's figures divided by the smallest size's (flat = 1.0 means O(1) appends).
Prints its figures and the machine's load; keeps no results file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import median, rotate, spread
from poolwatch.reaper.spool import Spool

QUERY = "SELECT * FROM orders WHERE customer_id = $1 AND status = 'open' ORDER BY created_at"


def record(n: int) -> dict[str, Any]:
    """A record shaped like a reaper's (same fields, a typical query)."""
    return {
        "record_id": str(uuid.uuid4()),
        "target": "orders",
        "kind": "postgres",
        "pid": 10_000 + n,
        "username": "web",
        "database": "orders",
        "application": "web-1",
        "client_addr": "10.0.0.7",
        "state": "idle",
        "idle_seconds": 3600.5,
        "query": QUERY,
        "backend_start": "2025-11-21T10:00:00+00:00",
        "reason": "idle",
        "mode": "enforce",
        "decided_at": "2025-11-21T11:00:00+00:00",
        "replica": "bench:1",
    }


def written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def fill(path: Path, size: int) -> None:
    path.write_text("".join(json.dumps(record(n)) + "\n" for n in range(size)))
    Spool(size + 1, str(path)).close()  # migrated into the store, write-ahead log checkpointed


def measure(path: Path, size: int, appends: int) -> dict[str, float]:
    """Per-append medians of one batch of appends to a store holding ``size`` records."""
    spool = Spool(size + appends + 1, str(path))
    walls, cpus, writes = [], [], []
    added = []
    for n in range(appends):
        item = record(n)
        added.append(item["record_id"])
        before_bytes, before_wall, before_cpu = written(), time.perf_counter(), time.process_time()
        spool.push(item)
        walls.append(time.perf_counter() - before_wall)
        cpus.append(time.process_time() - before_cpu)
        writes.append(written() - before_bytes)
    spool.remove(added)
    spool.close()
    return {
        "wall_ms": statistics.median(walls) * 1000,
        "cpu_us": statistics.median(cpus) * 1e6,
        "bytes": statistics.median(writes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--appends", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    args = parser.parse_args()
    harness.exit_on_sigterm()
    sizes = sorted(args.sizes)
    workdir = Path(tempfile.mkdtemp(prefix="poolwatch-bench-spool-"))
    info = harness.machine()
    rounds: list[dict[int, dict[str, float]]] = []
    try:
        paths = {size: workdir / f"spool-{size}.db" for size in sizes}
        for size, path in paths.items():
            fill(path, size)
        for round_no in range(args.rounds):
            figures = {size: measure(paths[size], size, args.appends) for size in rotate(sizes, round_no)}
            rounds.append(figures)
            print(
                f"round {round_no + 1}: " + ", ".join(f"{s}: {figures[s]['wall_ms']:.2f} ms" for s in sizes)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    smallest = sizes[0]
    print(f"\n{info['cpus']} CPUs ({info['cpu_model']}), Python {info['python']}, {info['date']}")
    end_load = os.getloadavg()[0]
    print(f"load average (1 min): {info['loadavg_1m_at_start']} at the start, {end_load:.2f} at the end")
    heading = ("records waiting", "wall ms", "cpu us", "bytes", "ratio: wall, cpu, bytes")
    print("\n{:>16} {:>22} {:>22} {:>22} {:>26}".format(*heading))
    for size in sizes:
        per = {key: [r[size][key] for r in rounds] for key in ("wall_ms", "cpu_us", "bytes")}
        ratios = {
            key: median([r[size][key] / r[smallest][key] for r in rounds if r[smallest][key]]) for key in per
        }
        print(
            f"{size:>16} {spread(per['wall_ms']):>22} {spread(per['cpu_us']):>22} "
            f"{spread(per['bytes']):>22} "
            f"{ratios['wall_ms']:>8.2f} {ratios['cpu_us']:>8.2f} {ratios['bytes']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
