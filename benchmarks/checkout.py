"""Checkout+checkin cost: bare SQLAlchemy vs poolwatch.instrument vs a naive prometheus_client wiring.

    .venv/bin/python benchmarks/checkout.py                 # starts its own PostgreSQL
    .venv/bin/python benchmarks/checkout.py --url postgresql+psycopg2://user:pw@host/db
    .venv/bin/python benchmarks/checkout.py --instructions  # callgrind instruction counts (valgrind)
    .venv/bin/python benchmarks/checkout.py --instructions --kind asyncpg  # another pool kind

``--kind`` picks the pool: ``sqlalchemy`` (the default, described here) or one of the kinds of
benchmarks/checkout_kinds.py (psycopg_pool, psycopg_pool_async, asyncpg, psycopg2_pool,
redis_async), each with its library's bare acquire/release cycle and the poolwatch variants.

The cycle is ``with engine.connect(): pass`` (QueuePool, psycopg2). Each variant runs in worker
processes of its own (its own engine, its own interpreter state; ``--processes`` of them, default 4,
taking rounds in turn); the parent runs many short rounds, interleaving the variants in a shuffled
order each round, so drift and noise from other processes on the machine hit every variant alike.
It prints the median microseconds per cycle of each variant and its ratio to bare, with the
interquartile range of the per-round ratios.

``--instructions`` counts instructions instead of timing (valgrind's callgrind): the same total for
the same code and inputs whatever else the machine is doing, so it resolves a few per cent where wall
time on a shared machine cannot. Each variant runs under callgrind twice, for N and 3N cycles, with
a fixed hash seed; the difference divided by 2N is the instructions per cycle, start-up cancelled.
Counts can differ between set-ups (another server, other imports: up to ~2 % was seen), so every
variant is counted ``--repeat`` times (default 3), each repeat's ratio is taken to bare of the same
repeat, and the median is reported with every per-repeat ratio.
It counts the checkout path alone (``loop``) and the checkout path plus one scrape (``run``), which
is where poolwatch folds the samples its hooks recorded. ``poolwatch-otel`` publishes through
OpenTelemetry as well (``poolwatch.otel.install``); its scrape includes an SDK collection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.servers import PostgresServer


ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("bare", "poolwatch", "poolwatch-noleak", "poolwatch-otel", "naive", "poolwatch-multiprocess")
KIND_VARIANTS = ("bare", "poolwatch", "poolwatch-noleak")  # no naive wiring for the other kinds


def kinds() -> Any:
    """benchmarks/checkout_kinds.py, importable whether this file runs as a script or as a module."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import checkout_kinds

    return checkout_kinds


def variants_of(kind: str) -> tuple[str, ...]:
    return VARIANTS if kind == "sqlalchemy" else KIND_VARIANTS


def worker(variant: str, url: str) -> None:
    """Serve ``run N`` requests on stdin: time N cycles, answer with seconds on stdout."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from sqlalchemy import create_engine, event

    import poolwatch
    from poolwatch.metrics import LATENCY_BUCKETS

    engine = create_engine(url, pool_size=5, max_overflow=10)
    registry = CollectorRegistry()
    otel_reader = None
    if variant == "poolwatch-multiprocess":
        # prometheus_client's multiprocess recipe: this worker takes a slot of a directory of its own
        # and writes its pool's samples there from a thread of its own. That thread's cost is per
        # interval, not per checkout, and callgrind stretches a second fifty-fold: its interval is set
        # past the run (POOLWATCH_MULTIPROC_INTERVAL overrides), so the checkout path is what is counted.
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="poolwatch-bench-")
        os.environ.setdefault("POOLWATCH_MULTIPROC_INTERVAL", "3600")
        poolwatch.instrument(engine, name="bench", registry=registry, leak_threshold=60.0)
    if variant == "poolwatch":
        poolwatch.instrument(engine, name="bench", registry=registry, leak_threshold=60.0)
    elif variant == "poolwatch-otel":
        # Published through OpenTelemetry as well (an SDK provider, collected with each scrape).
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from poolwatch import otel

        otel_reader = InMemoryMetricReader()
        otel.install(MeterProvider(metric_readers=[otel_reader]), registry=registry)
        poolwatch.instrument(engine, name="bench", registry=registry, leak_threshold=60.0)
    elif variant == "poolwatch-noleak":
        poolwatch.instrument(engine, name="bench", registry=registry)
    elif variant == "naive":
        in_use = Gauge("in_use", "", ["pool"], registry=registry).labels("bench")
        checkouts = Counter("checkouts", "", ["pool"], registry=registry).labels("bench")
        held = Histogram("use_seconds", "", ["pool"], registry=registry, buckets=LATENCY_BUCKETS).labels(
            "bench"
        )

        @event.listens_for(engine, "checkout")
        def on_checkout(_dbapi, record, _proxy):
            in_use.inc()
            checkouts.inc()
            record.info["t"] = time.perf_counter()

        @event.listens_for(engine, "checkin")
        def on_checkin(_dbapi, record):
            in_use.dec()
            started = record.info.pop("t", None)
            if started is not None:
                held.observe(time.perf_counter() - started)

    with engine.connect():
        pass  # connect once, outside the timing
    clock, cpu = time.perf_counter, time.thread_time
    checked, command = 0, ""
    for line in sys.stdin:
        command, count = line.split()
        if command == "profile":
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(int(count)):
                with engine.connect():
                    pass
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(18)
            checked += int(count)
            print(0.0, 0.0, 0.0, flush=True)
            continue
        cycles = int(count)
        started, cpu_started = clock(), cpu()
        for _ in range(cycles):
            with engine.connect():
                pass
        wall, used = clock() - started, cpu() - cpu_started
        checked += cycles
        if command == "loop":  # the checkout path alone, no scrape
            print(wall, used, 0.0, flush=True)
            continue
        # Then a scrape, as Prometheus would do: poolwatch folds its samples into buckets here, so
        # this is where the work the hook did not do is paid. Timed separately, reported per cycle.
        scrape_started = cpu()
        generate_latest(registry)
        if otel_reader is not None:
            # No timeout worth the name: under callgrind a collection of 3N samples takes far longer
            # than the SDK's default 10 s, which would fail the run.
            otel_reader.collect(timeout_millis=3_600_000)
        print(wall, used, cpu() - scrape_started, flush=True)
    if variant.startswith("poolwatch") and command != "loop":
        # The scrape side agrees with what the hot path recorded. Not after `loop` runs: this scrape
        # folds every sample of the run, and its cost would be counted as the checkout path's.
        value = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "poolwatch_pool_checkouts_total" and sample.labels.get("pool") == "bench"
        )
        assert value == checked + 1, (value, checked)
    engine.dispose()


def start_postgres() -> PostgresServer:
    sys.path.insert(0, str(ROOT))
    from tests.servers import PostgresServer

    return PostgresServer().start()


def start_redis():
    import tempfile

    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer

    return RedisServer(Path(tempfile.mkdtemp(prefix="poolwatch-bench-redis-"))).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="PostgreSQL URL (default: start a throw-away server)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--cycles", type=int, default=2000, help="checkouts per variant per round")
    parser.add_argument("--profile", choices=VARIANTS, help="print a cProfile of one variant and exit")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind instead of timing"
    )
    parser.add_argument("--processes", type=int, default=4, help="worker processes per variant (timing)")
    parser.add_argument("--repeat", type=int, default=3, help="--instructions: count each variant N times")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="--instructions: parallel runs")
    parser.add_argument(
        "--loop-only", action="store_true", help="--instructions: the checkout path alone, no scrape runs"
    )
    parser.add_argument("--kind", choices=("sqlalchemy", *kinds().KINDS), default="sqlalchemy")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--modes", default="loop,run", help="--instructions: loop (checkout path), run (plus a scrape)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated variants to run (bare always runs)"
    )
    args = parser.parse_args()
    chosen = {"bare", *args.variants.split(",")}
    unknown = chosen - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    args.chosen = tuple(v for v in variants_of(args.kind) if v in chosen)
    if args.worker:
        if args.kind == "sqlalchemy":
            worker(args.worker, args.url)
        else:
            kinds().worker(args.kind, args.worker, args.url)
        return 0

    server: Any = None
    if args.kind in kinds().NEEDS_REDIS and not args.url:
        server = start_redis()
        url = server.url()
    else:
        server = None if args.url else start_postgres()
        url = args.url if server is None else server.url()
    try:
        return instructions(args, url) if args.instructions else run(args, url)
    finally:
        if server is not None:
            getattr(server, "destroy", server.stop)()


def run(args: argparse.Namespace, url: str) -> int:
    variants = (args.profile,) if args.profile else args.chosen
    processes = 1 if args.profile else args.processes
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--url", url, "--kind", args.kind, "--worker"]
    # Several processes per variant: one process's memory layout can make it a few per cent faster
    # or slower for its whole life, which interleaving rounds does not average out; round r runs on
    # process r % processes of every variant.
    workers = {
        (v, k): subprocess.Popen(
            [*command, v], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
        )
        for v in variants
        for k in range(processes)
    }

    def ask(worker: tuple[str, int], command: str, cycles: int) -> tuple[float, float, float]:
        process = workers[worker]
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(f"{command} {cycles}\n")
        process.stdin.flush()
        wall, cpu, scrape = process.stdout.readline().split()
        return float(wall), float(cpu), float(scrape)

    try:
        if args.profile:
            ask((args.profile, 0), "profile", args.cycles * 10)
            return 0
        for worker in workers:  # warm-up round, not counted
            ask(worker, "run", args.cycles)
        results: dict[str, dict[str, list[float]]] = {
            clock: {v: [] for v in variants} for clock in ("wall", "cpu", "scrape")
        }
        for round_number in range(args.rounds):
            order = list(variants)
            random.shuffle(order)
            this_round = {v: ask((v, round_number % processes), "run", args.cycles) for v in order}
            for v in variants:
                results["wall"][v].append(this_round[v][0] / args.cycles)
                results["cpu"][v].append(this_round[v][1] / args.cycles)
                results["scrape"][v].append(this_round[v][2] / args.cycles)
    finally:
        for process in workers.values():
            assert process.stdin is not None
            process.stdin.close()
        for process in workers.values():
            process.wait(timeout=60)
    report(args, results)
    return 0


def instructions(args: argparse.Namespace, url: str) -> int:
    """Instructions per cycle of each variant under callgrind, and their ratios to bare."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    low, high = args.cycles, 3 * args.cycles

    def collected(job: tuple[str, str, int, int]) -> int:
        variant, mode, cycles, _repeat = job
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--url",
            url,
            "--kind",
            args.kind,
            "--worker",
            variant,
        ]
        done = subprocess.run(
            command,
            input=f"{mode} {cycles}\n",
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{variant} {mode} {cycles} failed: {done.stderr[-2000:]}")
        match = re.search(r"Collected : (\d+)", done.stderr)
        assert match, done.stderr[-2000:]
        return int(match.group(1))

    modes = ("loop",) if args.loop_only else tuple(m for m in ("loop", "run") if m in args.modes.split(","))
    jobs = [(v, m, n, r) for r in range(args.repeat) for m in modes for v in args.chosen for n in (low, high)]
    with ThreadPoolExecutor(max_workers=args.jobs) as executor:  # counts do not depend on the load
        counts = dict(zip(jobs, executor.map(collected, jobs), strict=True))
    # per_cycle[mode][variant][repeat]: instructions per cycle, start-up cancelled
    per_cycle = {
        m: {
            v: [(counts[v, m, high, r] - counts[v, m, low, r]) / (high - low) for r in range(args.repeat)]
            for v in args.chosen
        }
        for m in modes
    }
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"# {stamp}, {args.kind}, Python {platform.python_version()}, callgrind, "
        f"{low} and {high} cycles per variant, {args.repeat} repeats, PYTHONHASHSEED=0"
    )
    summary: dict[str, dict[str, dict[str, object]]] = {}
    titles = {"loop": "checkout path alone", "run": "checkout path plus one scrape"}
    for mode in modes:
        title = titles[mode]
        print(f"\n{mode}: instructions per cycle, {title}; ratios to bare of the same repeat")
        print(f"{'variant':18} {'median':>10} {'ratio':>8} {'per-repeat ratios':>30}")
        bare = per_cycle[mode]["bare"]
        for v in args.chosen:
            ratios = [x / b for x, b in zip(per_cycle[mode][v], bare, strict=True)]
            median = statistics.median(per_cycle[mode][v])
            ratio = statistics.median(ratios)
            shown = " ".join(f"{r:.3f}" for r in ratios)
            print(f"{v:18} {median:10.0f} {ratio:7.3f}x {shown:>30}")
            summary.setdefault(mode, {})[v] = {
                "median_instructions": round(median),
                "median_ratio": round(ratio, 4),
                "ratios": [round(r, 4) for r in ratios],
                "instructions": [round(x) for x in per_cycle[mode][v]],
            }
    print(json.dumps({"kind": args.kind, "instructions_per_cycle": summary}))
    return 0


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> None:
    import sqlalchemy

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, {os.cpu_count()} CPUs, "
        f"{args.rounds} rounds x {args.cycles} cycles per variant, interleaved, "
        f"{args.processes} processes per variant"
    )
    summary: dict[str, dict[str, dict[str, float]]] = {}
    scrape = results.pop("scrape")
    for clock, per_cycle in results.items():
        what = "wall time" if clock == "wall" else "CPU time of the worker thread"
        print(f"\n{clock}: {what}")
        print(
            f"{'variant':<17} {'median us/cycle':>16} {'ratio of medians':>17} "
            f"{'median per-round ratio':>23} {'its IQR':>14}"
        )
        bare = statistics.median(per_cycle["bare"])
        for v, samples in per_cycle.items():
            ratios = [x / b for x, b in zip(samples, per_cycle["bare"], strict=True)]
            median, ratio = statistics.median(samples), statistics.median(ratios)
            q = statistics.quantiles(ratios, n=4)
            summary.setdefault(clock, {})[v] = {
                "median_us": round(median * 1e6, 2),
                "ratio_of_medians": round(median / bare, 3),
                "median_round_ratio": round(ratio, 3),
            }
            print(
                f"{v:<17} {median * 1e6:>16.2f} {median / bare:>16.3f}x "
                f"{ratio:>22.3f}x {q[0]:>7.3f}-{q[2]:<6.3f}"
            )
    print("\nscrape: CPU time of one scrape after each round (folding included), per checkout of the round")
    for v, samples in scrape.items():
        median = statistics.median(samples) * 1e6
        summary.setdefault("scrape", {})[v] = {"median_us": round(median, 3)}
        print(f"{v:<17} {median:>16.3f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
