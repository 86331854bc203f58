"""Library-mode footprint: what ``import poolwatch`` + ``instrument(engine)`` add to a worker process.

    .venv/bin/python -m benchmarks.footprint               # 30 interleaved rounds, medians
    .venv/bin/python -m benchmarks.footprint --json benchmarks/results/footprint.json

Each round starts one fresh interpreter per variant, in a shuffled order:

- ``baseline``: imports SQLAlchemy and prometheus_client, builds a QueuePool engine on SQLite and
  checks a connection out and in (what an application worker has anyway);
- ``poolwatch``: the same, plus ``import poolwatch`` and ``poolwatch.instrument(engine)`` with leak
  detection, before the checkout.

Each reports the wall and CPU time of its imports and instrumentation and its resident set size at
the end (``VmRSS``); on a loaded machine the CPU times are the figures to read. The figures are the
medians of the per-round differences poolwatch - baseline, so drift and load from other processes hit
both alike. ``poolwatch --version``
is timed as a whole process (start-up included) in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROGRAM = """
import time
started, cpu_started = time.perf_counter(), time.process_time()
import prometheus_client
import sqlalchemy
from sqlalchemy.pool import QueuePool
engine = sqlalchemy.create_engine("sqlite://", poolclass=QueuePool)
own_started, own_cpu_started = time.perf_counter(), time.process_time()
{poolwatch}
own, own_cpu = time.perf_counter() - own_started, time.process_time() - own_cpu_started
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
with engine.connect():
    pass
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(elapsed, cpu, rss * 1024, own, own_cpu)
"""

VARIANTS = {
    "baseline": _PROGRAM.format(poolwatch=""),
    "poolwatch": _PROGRAM.format(
        poolwatch="import poolwatch\npoolwatch.instrument(engine, name='app', leak_threshold=30)"
    ),
}


# A worker imports from bytecode caches: with PYTHONDONTWRITEBYTECODE set none is ever written, and
# each round would time compiling poolwatch's sources. Multi-process export off, as in most workers.
_ENV = {
    key: value
    for key, value in os.environ.items()
    if key not in ("PYTHONDONTWRITEBYTECODE", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
}


def measure(variant: str) -> tuple[float, ...]:
    """(wall seconds, CPU seconds) of the imports and instrumentation, the RSS at the end, and the
    wall and CPU seconds of ``import poolwatch`` + ``instrument()`` alone, timed in the process."""
    command = [sys.executable, "-c", VARIANTS[variant]]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=_ENV)
    return tuple(float(value) for value in done.stdout.split())


def version_seconds() -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a whole ``poolwatch --version`` process."""
    command = [str(Path(sys.executable).parent / "poolwatch"), "--version"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, env=_ENV)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the results here as well")
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, ...]]] = {v: [] for v in VARIANTS}
    versions: list[tuple[float, float]] = []
    for _ in range(args.rounds):
        order = [*VARIANTS, "version"]
        random.shuffle(order)
        for variant in order:
            if variant == "version":
                versions.append(version_seconds())
            else:
                rows[variant].append(measure(variant))
    pairs = list(zip(rows["poolwatch"], rows["baseline"], strict=True))
    import_delta = [p[0] - b[0] for p, b in pairs]
    cpu_delta = [p[1] - b[1] for p, b in pairs]
    rss_delta = [p[2] - b[2] for p, b in pairs]
    own = [p[3] for p in rows["poolwatch"]]
    own_cpu = [p[4] for p in rows["poolwatch"]]
    load = os.getloadavg()
    result = {
        "command": ".venv/bin/python -m benchmarks.footprint",
        "header": (
            f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, load {load[0]:.1f}, {args.rounds} interleaved rounds, medians"
        ),
        "baseline": {
            "what": "SQLAlchemy + prometheus_client imported, a QueuePool engine, one checkout",
            "import_ms": round(statistics.median(r[0] for r in rows["baseline"]) * 1e3, 1),
            "import_cpu_ms": round(statistics.median(r[1] for r in rows["baseline"]) * 1e3, 1),
            "rss_mb": round(statistics.median(r[2] for r in rows["baseline"]) / 2**20, 1),
        },
        "poolwatch_over_baseline": {
            "what": "import poolwatch + instrument(engine, leak_threshold=30)",
            "import_ms": round(statistics.median(import_delta) * 1e3, 1),
            "import_ms_iqr": [round(q * 1e3, 1) for q in statistics.quantiles(import_delta, n=4)[::2]],
            "import_cpu_ms": round(statistics.median(cpu_delta) * 1e3, 1),
            "import_cpu_ms_iqr": [round(q * 1e3, 1) for q in statistics.quantiles(cpu_delta, n=4)[::2]],
            "rss_mb": round(statistics.median(rss_delta) / 2**20, 2),
            "rss_mb_iqr": [round(q / 2**20, 2) for q in statistics.quantiles(rss_delta, n=4)[::2]],
            # Timed around import poolwatch + instrument() in the process: no baseline to subtract,
            # so far less noise on a loaded machine than the differences above.
            "own_ms": round(statistics.median(own) * 1e3, 1),
            "own_ms_iqr": [round(q * 1e3, 1) for q in statistics.quantiles(own, n=4)[::2]],
            "own_cpu_ms": round(statistics.median(own_cpu) * 1e3, 1),
            "own_cpu_ms_iqr": [round(q * 1e3, 1) for q in statistics.quantiles(own_cpu, n=4)[::2]],
        },
        "cli_version_ms": round(statistics.median(v[0] for v in versions) * 1e3, 1),
        "cli_version_cpu_ms": round(statistics.median(v[1] for v in versions) * 1e3, 1),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
