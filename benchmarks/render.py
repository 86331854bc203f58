"""CPU of one /metrics answer, in process: this tree's endpoint against a baseline's, on one live daemon.

    python -m benchmarks.render [--targets 100] [--scrapes 40] [--ticks 6] [--tick 5] [--baseline DIR]

Starts its own PostgreSQL and Redis and, in this process, a daemon with the targets of
``benchmarks.scale`` (``--targets`` SQL targets plus one Redis target per ten; every job, census
included, on a ``--tick`` interval). Once every target is up and a couple of ticks have run, the
WSGI endpoint answers Prometheus' scrape request (text format, gzip) and the thread CPU time of
each answer is taken (``time.thread_time``: the daemon's own threads are not counted, waiting for
the GIL is not CPU). Two cases:

* back to back: ``--scrapes`` answers in a row, as ``benchmarks.scale`` scrapes (little changes
  in between);
* after a tick: one answer per tick, ``--ticks`` times (every target's jobs ran in between: what a
  Prometheus scraping every 15 s or more sees).

With ``--baseline DIR`` (another source tree, e.g. ``git archive REF | tar -x -C DIR``), that tree's
``poolwatch/exposition.py`` and ``poolwatch/http.py`` are loaded beside this tree's and answer the
same request on the same registry, alternating with this tree's (who goes first alternates too);
ratios this/baseline are of medians. A quick profiling harness as much as a benchmark: it does not
cover the HTTP server, which ``benchmarks.scale`` does. Writes benchmarks/results/render.json.

Once the daemon has built its targets, what the process holds is frozen out of the garbage
collector's passes, as ``poolwatch run`` does (``--no-freeze``: not). The full collections that happen while
answers are measured (whichever thread they land on) are timed and reported: one that comes due
during an answer is paid by that answer.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import poolwatch
from benchmarks import harness
from benchmarks.harness import median
from benchmarks.scale import redis_targets, targets_for
from poolwatch import http
from tests.daemonkit import running_daemon

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

ENVIRON = {
    "PATH_INFO": "/metrics",
    "REQUEST_METHOD": "GET",
    "QUERY_STRING": "",
    "HTTP_ACCEPT": harness.SCRAPE_HEADERS["Accept"],
    "HTTP_ACCEPT_ENCODING": harness.SCRAPE_HEADERS["Accept-Encoding"],
}

Answer = Callable[[], bytes]


def answer(endpoint: Any) -> Answer:
    def call() -> bytes:
        return b"".join(endpoint(dict(ENVIRON), lambda _status, _headers: None))

    return call


def endpoint_of(registry: CollectorRegistry, source: Path | None) -> Any:
    """This tree's Endpoint, or the one of ``source``'s exposition.py and http.py (the rest of the
    package is this tree's)."""
    settings: dict[str, Any] = {"healthy": lambda: True, "ready": lambda: True, "status": dict}
    if source is None:
        return http.Endpoint(registry, **settings)
    names = ("exposition", "http")
    saved = {name: (sys.modules[f"poolwatch.{name}"], getattr(poolwatch, name)) for name in names}
    try:
        for name in names:  # exposition first: the baseline's http imports it
            spec = importlib.util.spec_from_file_location(
                f"poolwatch.{name}", source / "poolwatch" / f"{name}.py"
            )
            if spec is None or spec.loader is None:
                raise SystemExit(f"no poolwatch/{name}.py in {source}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            setattr(poolwatch, name, module)
            spec.loader.exec_module(module)
        return module.Endpoint(registry, **settings)
    finally:
        for name, (module, attribute) in saved.items():
            sys.modules[f"poolwatch.{name}"] = module
            setattr(poolwatch, name, attribute)


def cpu_ms(call: Answer) -> float:
    started = time.thread_time()
    call()
    return (time.thread_time() - started) * 1e3


def wait_all_up(call: Answer, registry: CollectorRegistry, count: int, timeout: float = 120) -> None:
    from poolwatch.exposition import Renderer

    renderer = Renderer(registry)
    deadline = time.monotonic() + timeout
    while (up := harness.series_sum(harness.parse_samples(renderer.render()), "poolwatch_up")) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {up:g} of {count} targets up after {timeout}s")
        time.sleep(0.25)
    call()


@contextlib.contextmanager
def full_collections() -> Iterator[list[float]]:
    """The seconds of each of the garbage collector's full (oldest generation) collections while in
    the block, appended to the list it yields (the collector holds the GIL: wall time is its CPU)."""
    seconds: list[float] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                seconds.append(time.perf_counter() - started[0])

    gc.callbacks.append(timed)
    try:
        yield seconds
    finally:
        gc.callbacks.remove(timed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = harness.machine()
    count = args.targets + redis_targets(args.targets)
    os.environ.setdefault("POOLWATCH_STATE_DIR", tempfile.mkdtemp(prefix="poolwatch-render-"))
    with harness.servers() as (pg, redis_server):
        harness.create_databases(pg, [f"bench_{i:03d}" for i in range(args.targets)])
        config = {
            "targets": targets_for(args.targets, pg, redis_server, args.tick),
            "log": {"level": "WARNING"},
        }
        with (
            running_daemon(config, settle_heap=not args.no_freeze) as daemon,
            full_collections() as collected,
        ):
            registry = daemon.metrics.registry
            contenders = {"this": answer(endpoint_of(registry, None))}
            if args.baseline:
                contenders["baseline"] = answer(endpoint_of(registry, args.baseline))
            wait_all_up(contenders["this"], registry, count)
            time.sleep(2 * args.tick)  # a couple of ticks of every job: pools and caches warm
            for call in contenders.values():
                call()
            body = contenders["this"]()
            times: dict[str, dict[str, list[float]]] = {
                case: {name: [] for name in contenders} for case in ("back_to_back", "after_tick")
            }
            collected.clear()  # from here on: while answers are measured
            frozen = gc.get_freeze_count()
            for i in range(args.scrapes):
                for name in harness.rotate(list(contenders), i):
                    times["back_to_back"][name].append(cpu_ms(contenders[name]))
            for i in range(args.ticks):
                time.sleep(args.tick)
                for name in harness.rotate(list(contenders), i):
                    times["after_tick"][name].append(cpu_ms(contenders[name]))
    summary: dict[str, Any] = {
        "machine": info,
        "targets": count,
        "sql_targets": args.targets,
        "tick_s": args.tick,
        "scrapes": args.scrapes,
        "ticks": args.ticks,
        "gzip_bytes": len(body),
        "cpu_ms": {case: {name: median(t) for name, t in by.items()} for case, by in times.items()},
        "cpu_ms_all": times,
        "baseline": str(args.baseline or ""),
        "frozen_objects": frozen,
        "full_collections_ms": [seconds * 1e3 for seconds in collected],
    }
    if args.baseline:
        summary["ratio"] = {
            case: summary["cpu_ms"][case]["this"] / summary["cpu_ms"][case]["baseline"] for case in times
        }
    return summary


def report(summary: dict[str, Any]) -> None:
    print(f"\nmachine: {summary['machine']}")
    print(f"{summary['targets']} targets, tick {summary['tick_s']} s; CPU ms per /metrics answer (median)")
    for case, by in summary["cpu_ms"].items():
        ratio = summary.get("ratio", {}).get(case)
        cells = "  ".join(f"{name} {value:.2f}" for name, value in by.items())
        print(f"{case:>13}: {cells}" + (f"  ratio {ratio:.3f}" if ratio else ""))
    full = summary["full_collections_ms"]
    shown = f"median {median(full):.1f} ms, slowest {max(full):.1f} ms" if full else "none"
    print(f"full collections while measuring: {len(full)} ({shown}); frozen {summary['frozen_objects']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100, help="SQL targets (plus one Redis per ten)")
    parser.add_argument("--scrapes", type=int, default=40, help="back-to-back answers per contender")
    parser.add_argument("--ticks", type=int, default=6, help="answers one tick apart per contender")
    parser.add_argument("--tick", type=float, default=5.0, help="interval of every job, seconds")
    parser.add_argument("--baseline", type=Path, help="a source tree of another version to compare with")
    parser.add_argument(
        "--no-freeze", action="store_true", help="leave start-up objects to the garbage collector"
    )
    args = parser.parse_args()
    harness.exit_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        summary = run(args)
        report(summary)
        print("wrote", harness.save_results("render", summary))


if __name__ == "__main__":
    main()
