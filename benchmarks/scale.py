"""Scale: 1, 10, 50 and 100 SQL targets plus Redis targets; and a hung target among healthy ones.

    python -m benchmarks.scale [--rounds 2] [--sizes 1,10,50,100] [--tick 5] [--window 30]
                               [--baseline DIR]

Starts its own PostgreSQL (one database per SQL target) and Redis (one Redis target per ten SQL
targets, at least one). For each size, poolwatch runs with every job of every target on the same
``--tick`` interval (probe, census and housekeeping where present; reaper off). Per round and size:

* scheduler CPU per target per tick: CPU time of the poolwatch process over ``--window`` seconds
  without scrapes, divided by the probe runs in that window (one per target per tick, read back
  from ``poolwatch_job_duration_seconds_count``); so it includes every job a target runs per tick;
* resident memory (RSS) and threads, sampled every second of that window (the maximum is kept);
* scrape latency p50/p99 and CPU per scrape over ``--scrapes`` back-to-back scrapes (the jobs keep
  running meanwhile: their CPU rate, from the window above, is subtracted).

Then the hung-target check: 10 SQL + 1 Redis targets, with and without an 11th SQL target whose
server accepts TCP and never answers (a listening socket nobody accepts on). Reported per round: the
probe runs per healthy target per tick, and the worst staleness of a healthy target's last success
(sampled every half second), and the process's threads (the most seen); a hung target must change
neither of the first two, and each of its runs hung past its timeout holds a thread of its own.

With ``--baseline DIR`` (a source tree of another poolwatch version, e.g. ``git worktree add DIR
REF``), each round also measures every size on that version, interleaved with this one, and the
ratios this/baseline are computed within each round.

Rounds are interleaved (each round runs every size, rotating the order); figures are medians over
rounds. Writes benchmarks/results/scale.json and scale_latency.png, scale_memory.png, scale_cpu.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Contender, median, spread
from tests.servers import LOOPBACK


def targets_for(size: int, pg: Any, redis_server: Any, tick: float) -> list[dict[str, Any]]:
    timeout = round(tick * 0.8, 3)
    common = {
        "probe": {"interval": tick, "timeout": timeout},
        "census": {"interval": tick, "timeout": timeout},
    }
    targets = [
        {
            "name": f"db{i:03d}",
            "kind": "postgres",
            "url": pg.url(database=f"bench_{i:03d}"),
            "pool": {"housekeeping_interval": tick},
            **common,
        }
        for i in range(size)
    ]
    targets += [
        {"name": f"cache{i:02d}", "kind": "redis", "url": redis_server.url(db=i % 16), **common}
        for i in range(redis_targets(size))
    ]
    return targets


def redis_targets(size: int) -> int:
    return max(1, size // 10)


def wait_all_up(contender: Contender, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        up = harness.series_sum(harness.metrics(contender), "poolwatch_up")
        if up >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {up:g} of {count} targets up after {timeout}s")
        time.sleep(0.25)


def measure_size(
    size: int,
    pg: Any,
    redis_server: Any,
    workdir: Path,
    tick: float,
    window: float,
    scrapes: int,
    source: Path | None = None,
) -> dict[str, float]:
    targets = targets_for(size, pg, redis_server, tick)
    name = f"poolwatch-{size}" if source is None else f"baseline-{size}"
    contender = harness.start_poolwatch({"targets": targets}, workdir, name=name, source=source)
    try:
        wait_all_up(contender, len(targets))
        time.sleep(2 * tick)  # a couple of ticks of every job: pools and caches warm
        before = harness.metrics(contender)
        cpu_before = contender.cpu_seconds()
        rss, threads = 0, 0
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            rss, threads = max(rss, contender.rss_bytes()), max(threads, contender.threads())
        cpu = contender.cpu_seconds() - cpu_before
        after = harness.metrics(contender)
        ticks = harness.series_sum(after, "poolwatch_job_duration_seconds_count", task="probe") - (
            harness.series_sum(before, "poolwatch_job_duration_seconds_count", task="probe")
        )
        runs = harness.series_sum(after, "poolwatch_job_duration_seconds_count") - harness.series_sum(
            before, "poolwatch_job_duration_seconds_count"
        )
        scrape_started = time.monotonic()
        scraped = harness.scrape_round(contender, scrapes)
        scrape_seconds = time.monotonic() - scrape_started
    finally:
        contender.stop()
    return {
        "targets": len(targets),
        "cpu_ms_per_target_tick": cpu / max(ticks, 1) * 1e3,
        "jobs_per_target_tick": runs / max(ticks, 1),
        "target_ticks": ticks,
        "expected_target_ticks": len(targets) * window / tick,
        "rss_mb": rss / 2**20,
        "threads": threads,
        "p50_ms": scraped.p50 * 1e3,
        "p99_ms": scraped.p99 * 1e3,
        # The jobs keep running while we scrape: take their CPU (measured above) out.
        "cpu_ms_per_scrape": (scraped.cpu_seconds - cpu / window * scrape_seconds) / scrapes * 1e3,
        "samples": scraped.samples,
    }


def measure_hung(
    pg: Any, redis_server: Any, workdir: Path, tick: float, window: float, hung: bool
) -> dict[str, float]:
    targets = targets_for(10, pg, redis_server, tick)
    healthy = [t["name"] for t in targets]
    hole = harness.blackhole()
    try:
        if hung:
            targets.append(
                {
                    **targets[0],
                    "name": "hung",
                    "url": f"postgresql+psycopg2://{pg.superuser}:{pg.password}@{LOOPBACK}:"
                    f"{hole.getsockname()[1]}/postgres",
                }
            )
        contender = harness.start_poolwatch({"targets": targets}, workdir, name=f"poolwatch-hung-{hung}")
        try:
            wait_all_up(contender, len(healthy))
            time.sleep(2 * tick)
            before = harness.metrics(contender)
            worst, threads = 0.0, 0
            deadline = time.monotonic() + window
            while time.monotonic() < deadline:
                threads = max(threads, contender.threads())
                samples = harness.metrics(contender)
                now = time.time()
                ages = [
                    now
                    - harness.series_sum(
                        samples, "poolwatch_job_last_success_timestamp_seconds", task="probe", target=name
                    )
                    for name in healthy
                ]
                worst = max(worst, *ages)
                time.sleep(0.5)
            after = harness.metrics(contender)
        finally:
            contender.stop()
    finally:
        hole.close()

    def delta(name: str, **labels: str) -> float:
        return harness.series_sum(after, name, **labels) - harness.series_sum(before, name, **labels)

    runs = sum(delta("poolwatch_job_duration_seconds_count", task="probe", target=n) for n in healthy)
    return {
        "probe_runs_per_healthy_target_tick": runs / (len(healthy) * window / tick),
        "worst_healthy_staleness_s": worst,
        "threads": threads,
        "hung_failures": delta("poolwatch_job_failures_total", task="probe", target="hung"),
        "hung_skipped": delta("poolwatch_job_skipped_total", task="probe", target="hung"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = harness.machine()
    sizes = [int(s) for s in args.sizes.split(",")]
    per_size: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    baseline: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    versions = [None, args.baseline] if args.baseline else [None]
    hung: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    with harness.servers() as (pg, redis_server), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        harness.create_databases(pg, [f"bench_{i:03d}" for i in range(max(sizes))])
        for round_no in range(args.rounds):
            for size in harness.rotate(sizes, round_no):
                for source in harness.rotate(versions, round_no):
                    result = measure_size(
                        size, pg, redis_server, workdir, args.tick, args.window, args.scrapes, source
                    )
                    (per_size if source is None else baseline)[size].append(result)
                    who = "this" if source is None else "baseline"
                    print(f"round {round_no + 1} size {size} {who}: {result}", file=sys.stderr)
            if args.hung:
                for with_hung in harness.rotate([False, True], round_no):
                    result = measure_hung(pg, redis_server, workdir, args.tick, args.window, with_hung)
                    hung["with" if with_hung else "without"].append(result)
                    print(f"round {round_no + 1} hung={with_hung}: {result}", file=sys.stderr)
    return {
        "machine": info,
        "rounds": args.rounds,
        "tick_s": args.tick,
        "window_s": args.window,
        "scrapes_per_round": args.scrapes,
        "sizes": {str(size): rounds for size, rounds in per_size.items()},
        "baseline": {
            "source": _describe(args.baseline),
            "sizes": {str(size): rounds for size, rounds in baseline.items()},
        }
        if args.baseline
        else {},
        "hung": hung if args.hung else {},
    }


def _describe(source: Path | None) -> str:
    """The baseline's commit, when it is a git checkout."""
    if source is None:
        return ""
    found = subprocess.run(
        ["git", "-C", str(source), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or str(source)


def report(summary: dict[str, Any]) -> None:
    print(f"\nmachine: {summary['machine']}")
    print(
        f"{summary['rounds']} rounds, tick {summary['tick_s']} s, window {summary['window_s']} s; "
        "median [min-max] over rounds"
    )
    keys = ["p50_ms", "p99_ms", "cpu_ms_per_scrape", "cpu_ms_per_target_tick", "rss_mb", "threads", "samples"]
    print(f"{'SQL targets':>11} {'total':>5} " + " ".join(f"{k:>22}" for k in keys))
    for size, rounds in summary["sizes"].items():
        cells = " ".join(f"{spread([r[k] for r in rounds]):>22}" for k in keys)
        print(f"{size:>11} {rounds[0]['targets']:>5} {cells}")
    base = summary.get("baseline") or {}
    if base:
        print(f"baseline {base['source']}: ratio this/baseline, median over rounds")
        for size, rounds in base["sizes"].items():
            ours = summary["sizes"][size]
            pairs = list(zip(ours, rounds, strict=True))
            cells = " ".join(f"{spread([o[k] / b[k] for o, b in pairs if b[k]]):>22}" for k in keys)
            print(f"{size:>11} {rounds[0]['targets']:>5} {cells}")
    for case, rounds in summary["hung"].items():
        if rounds:
            shown = ", ".join(f"{k} {spread([r[k] for r in rounds])}" for k in rounds[0])
            print(f"{case} hung target: {shown}")


def chart(summary: dict[str, Any]) -> list[Path]:
    plt = harness.pyplot()
    sizes = [int(s) for s in summary["sizes"]]
    rows = [summary["sizes"][str(s)] for s in sizes]

    def med(key: str) -> list[float]:
        return [median([r[key] for r in rounds]) for rounds in rows]

    stamp = f"{summary['machine']['date']}, {summary['machine']['cpus']} shared noisy cores"
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(sizes, med("p50_ms"), "o-", label="p50")
    ax.plot(sizes, med("p99_ms"), "s--", label="p99")
    ax.plot([1, 100], [2, 20], "r:", label="targets: 2 ms at 1, 20 ms at 100 (p50)")
    ax.set_xlabel("SQL targets (plus 1 Redis target per 10)")
    ax.set_ylabel("/metrics scrape latency, ms")
    ax.set_title(f"Scrape latency vs targets ({stamp})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    paths.append(harness.RESULTS / "scale_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(sizes, med("rss_mb"), "o-", label="RSS, MB")
    ax.axhline(80, color="red", linestyle=":", label="target: 80 MB at 10 targets")
    ax.set_xlabel("SQL targets (plus 1 Redis target per 10)")
    ax.set_ylabel("resident memory, MB")
    twin = ax.twinx()
    twin.plot(sizes, med("threads"), "^--", color="tab:green", label="threads")
    twin.set_ylabel("threads")
    ax.legend(loc="upper left")
    twin.legend(loc="lower right")
    ax.set_title(f"Memory and threads vs targets ({stamp})", fontsize=9)
    fig.tight_layout()
    paths.append(harness.RESULTS / "scale_memory.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(sizes, med("cpu_ms_per_target_tick"), "o-", label="CPU per target per tick")
    ax.axhline(2, color="red", linestyle=":", label="target: 2 ms")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("SQL targets (plus 1 Redis target per 10)")
    ax.set_ylabel("scheduler CPU, ms per target per tick")
    ax.set_title(f"Scheduler CPU per target per tick ({stamp})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    paths.append(harness.RESULTS / "scale_cpu.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="1,10,50,100")
    # 5 s: a third of the default probe and census intervals. At 1 s, 50 targets (150 jobs a second)
    # already saturated the 2 shared cores, and scrapes measured the overload, not the exposition.
    parser.add_argument("--tick", type=float, default=5.0, help="interval of every job, seconds")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of scheduler CPU sampling")
    parser.add_argument("--scrapes", type=int, default=100)
    parser.add_argument("--no-hung", dest="hung", action="store_false", help="skip the hung-target check")
    parser.add_argument("--baseline", type=Path, help="a source tree of another version to compare with")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    harness.pyplot()  # fail now, not after the run, if matplotlib is missing
    summary = run(args)
    report(summary)
    print("wrote", harness.save_results("scale", summary), *chart(summary))


if __name__ == "__main__":
    main()
