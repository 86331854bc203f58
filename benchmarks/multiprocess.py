"""Multi-process mode: the application endpoint's scrape time with many workers, and after many recycles.

    .venv/bin/python benchmarks/multiprocess.py                       # 16 workers x 3 pools, 1,000 recycles
    .venv/bin/python benchmarks/multiprocess.py --instructions        # also the checkout path under callgrind
    .venv/bin/python benchmarks/multiprocess.py --write benchmarks/results/multiprocess.json

Workers are real processes (forked, as gunicorn forks them), each instrumenting ``--pools`` SQLite
QueuePools and checking out from them, with ``PROMETHEUS_MULTIPROC_DIR`` set; they stay alive while
the endpoint is scraped. A scrape is what ``poolwatch.make_wsgi_app()`` does in that mode:
``generate_latest`` of a registry holding prometheus_client's ``MultiProcessCollector``, timed
``--scrapes`` times for the median and p90. Then ``--recycles`` more workers, one after the other,
each takes a slot, counts, writes and exits, as gunicorn's ``max_requests`` recycles them; the
directory's files and the scrape are measured again, and the checkout totals are checked exact.
``--instructions`` runs ``benchmarks/checkout.py --instructions`` for bare SQLAlchemy and poolwatch in
multiprocess mode (its writer thread running every second, counted too): the checkout path alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKOUTS = 20  # per pool and worker


def worker(directory: Path, pools: int, checkouts: int, ready: int | None, stop: int | None) -> None:
    """In a forked child: instrument, check out, write, then wait for ``stop`` (or exit at once)."""
    import sqlalchemy

    import poolwatch
    from poolwatch.instrument import multiprocess

    engines = []
    for index in range(pools):
        engine = sqlalchemy.create_engine(
            f"sqlite:///{directory}/pool{index}.sqlite", poolclass=sqlalchemy.pool.QueuePool
        )
        poolwatch.instrument(engine, name=f"pool{index}")
        engines.append(engine)
    for engine in engines:
        for _ in range(checkouts):
            with engine.connect():
                pass
    flusher = multiprocess.current()
    assert flusher is not None
    flusher.flush()
    if ready is not None:
        os.write(ready, b"x")
    if stop is not None:
        os.read(stop, 1)
    flusher.close()  # what the interpreter's exit does (os._exit below skips it)


def fork(directory: Path, pools: int, checkouts: int, ready: int | None, stop: int | None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            worker(directory, pools, checkouts, ready, stop)
        except BaseException as exc:
            print(f"worker failed: {exc!r}", file=sys.stderr)
            code = 1
        os._exit(code)
    return pid


def scrape_times(scrapes: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU milliseconds per scrape of the multiprocess endpoint, and the body's size."""
    from prometheus_client import generate_latest

    from poolwatch.endpoint import metrics_registry

    registry = metrics_registry()
    wall, cpu, size = [], [], 0
    for _ in range(scrapes):
        started, cpu_started = time.perf_counter(), time.thread_time()
        size = len(generate_latest(registry))
        cpu.append((time.thread_time() - cpu_started) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    return wall, cpu, size


def checkouts_total(pools: int) -> float:
    from poolwatch.endpoint import metrics_registry

    registry = metrics_registry()
    return sum(
        registry.get_sample_value("poolwatch_pool_checkouts_total", {"pool": f"pool{i}"}) or 0.0
        for i in range(pools)
    )


def summary(wall: list[float], cpu: list[float], size: int, directory: Path) -> dict[str, object]:
    files = [p for p in directory.iterdir() if p.suffix in (".db", ".lock")]
    return {
        "median_ms": round(statistics.median(wall), 3),
        "p90_ms": round(statistics.quantiles(wall, n=10)[-1], 3),
        "cpu_median_ms": round(statistics.median(cpu), 3),
        "body_bytes": size,
        "files": len(files),
        "bytes_on_disk": sum(p.stat().st_size for p in files),
    }


def instructions(cycles: int, repeat: int, log: Path | None) -> dict[str, object]:
    """The checkout path's instructions (``checkout.py --instructions``), run now or read from ``log``,
    the saved output of the same command."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "checkout.py"),
        "--instructions",
        "--variants",
        "poolwatch-multiprocess",
        "--modes",
        "loop",
        "--cycles",
        str(cycles),
        "--repeat",
        str(repeat),
    ]
    if log is None:
        output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    else:
        output = log.read_text(encoding="utf-8")
    header = next(line for line in output.splitlines() if line.startswith("#"))
    counts = json.loads(output.strip().splitlines()[-1])["instructions_per_cycle"]
    shown = " ".join(command[1:]).replace(str(ROOT) + "/", "")
    return {"command": f".venv/bin/python {shown}", "header": header, "instructions_per_cycle": counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--recycles", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--instructions", action="store_true", help="also count the checkout path")
    parser.add_argument("--cycles", type=int, default=1000, help="--instructions: checkouts per run")
    parser.add_argument("--repeat", type=int, default=1, help="--instructions: runs per variant")
    parser.add_argument("--checkout-log", type=Path, help="--instructions: that command's saved output")
    parser.add_argument("--write", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    directory = Path(tempfile.mkdtemp(prefix="poolwatch-multiprocess-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # before poolwatch reads it
    import sqlalchemy  # noqa: F401 - loaded once here, not in every forked worker

    import poolwatch.instrument.sqlalchemy  # noqa: F401

    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    live = [fork(directory, args.pools, CHECKOUTS, ready_w, stop_r) for _ in range(args.workers)]
    for _ in live:
        os.read(ready_r, 1)
    expected = args.workers * args.pools * CHECKOUTS
    assert checkouts_total(args.pools) == expected, (checkouts_total(args.pools), expected)
    before = summary(*scrape_times(args.scrapes), directory)

    started = time.perf_counter()
    for _ in range(args.recycles):
        pid = fork(directory, args.pools, CHECKOUTS, None, None)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
    recycle_ms = (time.perf_counter() - started) * 1000 / max(1, args.recycles)
    expected += args.recycles * args.pools * CHECKOUTS
    total = checkouts_total(args.pools)
    after = summary(*scrape_times(args.scrapes), directory)

    os.write(stop_w, b"x" * len(live))
    for pid in live:
        os.waitpid(pid, 0)
    shutil.rmtree(directory, ignore_errors=True)
    results: dict[str, object] = {
        "header": (
            f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, load average {load_start:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end"
        ),
        "command": ".venv/bin/python benchmarks/multiprocess.py"
        + (" --instructions" if args.instructions else ""),
        "workers": args.workers,
        "pools": args.pools,
        "recycles": args.recycles,
        "scrapes": args.scrapes,
        "live": before,
        "after_recycles": after,
        "recycle_ms": round(recycle_ms, 2),
        "checkouts_expected": expected,
        "checkouts_exported": total,
    }
    if args.instructions:
        results["checkout"] = instructions(args.cycles, args.repeat, args.checkout_log)
    print(json.dumps(results, indent=2))
    if args.write:
        args.write.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if total == expected else 1


if __name__ == "__main__":
    sys.exit(main())
