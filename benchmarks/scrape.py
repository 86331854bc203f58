"""Scrape cost: poolwatch with 1 PostgreSQL + 1 Redis target, side by side with the Go exporters.

    python -m benchmarks.scrape [--rounds 7] [--scrapes 300] [--no-peers]

Starts its own PostgreSQL and Redis, poolwatch (census on, default intervals) and, on the same two
servers, ``prometheus-postgres-exporter`` and ``prometheus-redis-exporter`` (Debian packages,
installed with apt-get when missing), each on a free loopback port with its packaged defaults. Each
round scrapes every contender ``--scrapes`` times back to back (rotating who goes first), on a fresh
connection per scrape, once with the headers Prometheus sends (OpenMetrics preferred, gzip) and once
asking for plain text without compression (rotating which goes first). Per round and request:
client-side latency p50/p99, CPU time of the contender's process per scrape (psutil); RSS per round.
Printed: medians over rounds, and poolwatch/peer ratios computed within each round, then their
median, per request.
Writes benchmarks/results/scrape.json and scrape_latency.png, scrape_ratios.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Contender, ScrapeRound, median, spread
from tests.servers import LOOPBACK, free_port

PEER_PACKAGES = {
    "prometheus-postgres-exporter": "prometheus-postgres-exporter",
    "prometheus-redis-exporter": "prometheus-redis-exporter",
}


def poolwatch_config(pg: Any, redis_server: Any) -> dict[str, Any]:
    return {
        "targets": [
            {"name": "pg", "kind": "postgres", "url": pg.url()},
            {"name": "cache", "kind": "redis", "url": redis_server.url()},
        ]
    }


def start_peers(pg: Any, redis_server: Any, workdir: Path) -> list[Contender]:
    harness.ensure_debian_packages(PEER_PACKAGES)
    pg_port, redis_port = free_port(), free_port()
    dsn = f"postgresql://{pg.superuser}:{pg.password}@{pg.host}:{pg.port}/postgres?sslmode=disable"
    postgres_exporter = harness.start_process(
        "postgres_exporter",
        [
            "prometheus-postgres-exporter",
            f"--web.listen-address={LOOPBACK}:{pg_port}",
            "--log.level=warn",
        ],
        pg_port,
        workdir,
        env={"DATA_SOURCE_NAME": dsn},
    )
    redis_exporter = harness.start_process(
        "redis_exporter",
        [
            "prometheus-redis-exporter",
            f"-redis.addr=redis://{redis_server.host}:{redis_server.port}",
            f"-web.listen-address={LOOPBACK}:{redis_port}",
        ],
        redis_port,
        workdir,
    )
    return [postgres_exporter, redis_exporter]


# What a contender is asked for: Prometheus' own request, and plain text without compression.
REQUESTS = {"openmetrics-gzip": harness.SCRAPE_HEADERS, "plain": harness.PLAIN_HEADERS}


def run(rounds: int, scrapes: int, peers: bool) -> dict[str, Any]:
    info = harness.machine()
    with harness.servers() as (pg, redis_server), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        contenders = [harness.start_poolwatch(poolwatch_config(pg, redis_server), workdir)]
        try:
            if peers:
                contenders += start_peers(pg, redis_server, workdir)
            for contender in contenders:  # warm up: connections open, first census done, caches hot
                for headers in REQUESTS.values():
                    harness.scrape_round(contender, 20, headers)
            results: dict[str, dict[str, list[ScrapeRound]]] = {
                request: {c.name: [] for c in contenders} for request in REQUESTS
            }
            rss: dict[str, list[int]] = {c.name: [] for c in contenders}
            for round_no in range(rounds):
                for request in harness.rotate(list(REQUESTS), round_no):
                    for contender in harness.rotate(contenders, round_no):
                        scraped = harness.scrape_round(contender, scrapes, REQUESTS[request])
                        results[request][contender.name].append(scraped)
                for contender in contenders:
                    rss[contender.name].append(contender.rss_bytes())
                print(f"round {round_no + 1}/{rounds} done", file=sys.stderr)
            threads = {c.name: c.threads() for c in contenders}
        finally:
            for contender in contenders:
                contender.stop()
    return {
        "machine": info,
        "rounds": rounds,
        "scrapes_per_round": scrapes,
        "requests": {request: summarize(results[request], rss, threads) for request in REQUESTS},
    }


def summarize(
    results: dict[str, list[ScrapeRound]], rss: dict[str, list[int]], threads: dict[str, int]
) -> dict[str, Any]:
    """One request's figures: per contender, and poolwatch's ratios to each peer."""
    contenders: dict[str, Any] = {}
    for name, per_round in results.items():
        contenders[name] = {
            "p50_ms": [r.p50 * 1e3 for r in per_round],
            "p99_ms": [r.p99 * 1e3 for r in per_round],
            "cpu_ms_per_scrape": [r.cpu_per_scrape * 1e3 for r in per_round],
            "rss_mb": [b / 2**20 for b in rss[name]],
            "samples": per_round[-1].samples,
            "body_bytes": per_round[-1].body_bytes,
            "threads": threads[name],
        }
    ratios: dict[str, dict[str, float]] = {}
    mine = results["poolwatch"]
    for peer, theirs in results.items():
        if peer == "poolwatch":
            continue
        ratios[peer] = {
            "p50": median([a.p50 / b.p50 for a, b in zip(mine, theirs, strict=True)]),
            "p99": median([a.p99 / b.p99 for a, b in zip(mine, theirs, strict=True)]),
            "cpu_per_scrape": median(
                [a.cpu_per_scrape / max(b.cpu_per_scrape, 1e-9) for a, b in zip(mine, theirs, strict=True)]
            ),
            "rss": median([a / b for a, b in zip(rss["poolwatch"], rss[peer], strict=True)]),
        }
    if {"postgres_exporter", "redis_exporter"} <= results.keys():
        # poolwatch does the work of both: compare with the pair (CPU and memory add up).
        pair_cpu = [
            a.cpu_per_scrape / max(b.cpu_per_scrape + c.cpu_per_scrape, 1e-9)
            for a, b, c in zip(mine, results["postgres_exporter"], results["redis_exporter"], strict=True)
        ]
        pair_rss = [
            a / (b + c)
            for a, b, c in zip(rss["poolwatch"], rss["postgres_exporter"], rss["redis_exporter"], strict=True)
        ]
        ratios["both_exporters"] = {"cpu_per_scrape": median(pair_cpu), "rss": median(pair_rss)}
    return {"contenders": contenders, "ratios": ratios}


def report(summary: dict[str, Any]) -> None:
    print(f"\nmachine: {summary['machine']}")
    print(
        f"{summary['rounds']} rounds x {summary['scrapes_per_round']} scrapes; median [min-max] over rounds"
    )
    for request, figures in summary["requests"].items():
        print(f"\n{request} request")
        print(f"{'contender':<18} {'p50 ms':>22} {'p99 ms':>22} {'CPU ms/scrape':>22} {'RSS MB':>20} samples")
        for name, c in figures["contenders"].items():
            print(
                f"{name:<18} {spread(c['p50_ms']):>22} {spread(c['p99_ms']):>22} "
                f"{spread(c['cpu_ms_per_scrape']):>22} {spread(c['rss_mb']):>20} {c['samples']}"
            )
        for peer, r in figures["ratios"].items():
            shown = ", ".join(f"{k} {v:.3f}x" for k, v in r.items())
            print(f"poolwatch / {peer}: {shown}")


def chart(summary: dict[str, Any]) -> list[Path]:
    plt = harness.pyplot()
    requests = summary["requests"]
    names = list(next(iter(requests.values()))["contenders"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / (2 * len(requests))
    xs = range(len(names))
    bar = 0
    for request, figures in requests.items():
        contenders = figures["contenders"]
        for quantile in ("p50", "p99"):
            values = [median(contenders[n][f"{quantile}_ms"]) for n in names]
            left.bar([x + bar * width for x in xs], values, width, label=f"{quantile}, {request}")
            bar += 1
    left.set_xticks([x + width * (bar - 1) / 2 for x in xs], names)
    left.set_yscale("log")
    left.set_ylabel("scrape latency, ms (log)")
    left.set_title("/metrics scrape latency (1 PostgreSQL + 1 Redis)")
    left.legend(fontsize=8)
    width = 0.8 / len(requests)
    for i, (request, figures) in enumerate(requests.items()):
        cpu = [median(figures["contenders"][n]["cpu_ms_per_scrape"]) for n in names]
        right.bar([x + i * width for x in xs], cpu, width, label=request)
    right.set_xticks([x + width * (len(requests) - 1) / 2 for x in xs], names)
    right.set_ylabel("CPU ms per scrape (process)")
    right.set_title("CPU per scrape")
    right.legend(fontsize=8)
    fig.suptitle(f"{summary['machine']['date']}, {summary['machine']['cpus']} shared noisy cores", fontsize=9)
    fig.tight_layout()
    paths = [harness.RESULTS / "scrape_latency.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    bars = [(request, peer) for request, figures in requests.items() for peer in figures["ratios"]]
    if bars:
        fig, ax = plt.subplots(figsize=(10, 4.4))
        metrics_shown = ["p50", "p99", "cpu_per_scrape", "rss"]
        width = 0.8 / len(bars)
        for i, (request, peer) in enumerate(bars):
            ratios = requests[request]["ratios"][peer]
            values = [ratios.get(m, float("nan")) for m in metrics_shown]
            ax.bar(
                [x + i * width for x in range(len(metrics_shown))],
                values,
                width,
                label=f"vs {peer}, {request}",
            )
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.axhline(0.15, color="red", linestyle="--", linewidth=0.8, label="goal vs postgres_exporter 0.15x")
        ax.set_xticks(
            [x + width * (len(bars) - 1) / 2 for x in range(len(metrics_shown))],
            ["p50 latency", "p99 latency", "CPU / scrape", "RSS"],
        )
        ax.set_yscale("log")
        ax.set_ylabel("poolwatch / peer (log; < 1: poolwatch cheaper)")
        ax.set_title(f"poolwatch overhead relative to the Go exporters ({summary['machine']['date']})")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(harness.RESULTS / "scrape_ratios.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--no-peers", action="store_true", help="poolwatch alone")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    harness.pyplot()  # fail now, not after the run, if matplotlib is missing
    summary = run(args.rounds, args.scrapes, peers=not args.no_peers)
    report(summary)
    print("wrote", harness.save_results("scrape", summary), *chart(summary))


if __name__ == "__main__":
    main()
