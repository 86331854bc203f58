"""Soak: `poolwatch run` for a few minutes against PostgreSQL and Redis servers this script starts,
under churn (sessions terminated, Redis clients killed, both servers restarted, constant scraping, a
target with a wrong password and one that is unreachable), sampling the daemon's resident memory,
threads and open file descriptors. Verdict: no growth after warm-up (median of the last third against
the median of the second third).

    .venv/bin/python benchmarks/soak.py --duration 180

Exit status 0 when the verdict is "no growth", 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import PostgresServer, RedisServer, free_port

# Growth allowed between the second and the last third: memory is noisy (allocator, caches), counts
# of threads and descriptors are not (one in flight either side).
RSS_GROWTH = 1.10
THREADS_SLACK = 3
FDS_SLACK = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of churn (default 180)")
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="poolwatch-soak-"))
    pg = PostgresServer().start()
    redis_server = RedisServer(tmp / "redis").start()
    try:
        return soak(args.duration, args.sample, pg, redis_server, tmp)
    finally:
        redis_server.stop()
        pg.destroy()


def soak(duration: float, every: float, pg: PostgresServer, redis_server: RedisServer, tmp: Path) -> int:
    pg.create_role("soak_app", "soak-password")
    port = free_port()
    probe = "probe: {interval: 0.5, timeout: 0.5, auth_backoff_max: 4}"
    config = tmp / "poolwatch.yaml"
    config.write_text(
        "targets:\n"
        f"  - {{name: pg, kind: postgres, pool: {{size: 5, max_overflow: 5}}, {probe},"
        f" url: 'postgresql://soak_app:soak-password@{pg.host}:{pg.port}/postgres'}}\n"
        f"  - {{name: cache, kind: redis, {probe},"
        f" url: 'redis://{redis_server.host}:{redis_server.port}/0'}}\n"
        f"  - {{name: wrong_password, kind: postgres,"
        f" url: 'postgresql://soak_app:nope@{pg.host}:{pg.port}/postgres', {probe}}}\n"
        f"  - {{name: unreachable, kind: redis, url: 'redis://127.0.0.1:{free_port()}/0', {probe}}}\n"
    )
    log = (tmp / "poolwatch.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "poolwatch", "run", "-c", str(config), "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    process = psutil.Process(daemon.pid)
    stop = threading.Event()
    counts = {"scrapes": 0, "scrape_errors": 0, "terminated": 0, "killed": 0, "restarts": 0}
    workers = [
        threading.Thread(target=scraper, args=(port, stop, counts), daemon=True),
        threading.Thread(target=churn, args=(pg, redis_server, duration, stop, counts), daemon=True),
    ]
    samples: list[tuple[float, float, int, int]] = []
    started = time.monotonic()
    try:
        time.sleep(2)
        for worker in workers:
            worker.start()
        while (elapsed := time.monotonic() - started) < duration:
            with process.oneshot():
                samples.append(
                    (elapsed, process.memory_info().rss / 2**20, process.num_threads(), process.num_fds())
                )
            time.sleep(every)
    finally:
        stop.set()
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(30)
        log.close()
    return report(samples, counts, duration, exit_code)


ERRORS: list[str] = []


def scraper(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        for path in ("/metrics", "/status", "/healthz"):
            counts["scrapes" if fetch(f"http://127.0.0.1:{port}{path}") else "scrape_errors"] += 1
        stop.wait(0.2)


def fetch(url: str) -> bool:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
    except OSError as exc:
        ERRORS.append(f"{url.rsplit('/', 1)[-1]}: {exc} after {time.monotonic() - started:.1f}s")
        return False
    return True


def churn(
    pg: PostgresServer,
    redis_server: RedisServer,
    duration: float,
    stop: threading.Event,
    counts: dict[str, int],
) -> None:
    """Every second: terminate the daemon's sessions or kill its Redis clients; six times per run,
    restart one of the servers."""
    restart_every = duration / 6
    next_restart = time.monotonic() + restart_every / 2
    turn = 0
    while not stop.wait(1.0):
        if time.monotonic() >= next_restart:
            counts["restarts"] += attempt((pg if turn % 2 == 0 else redis_server).restart)
            next_restart += restart_every
            turn += 1
        elif turn % 2 == 0:
            counts["terminated"] += attempt(lambda: pg.terminate("poolwatch-pg"))
        else:
            counts["killed"] += attempt(lambda: kill_redis_clients(redis_server))


def kill_redis_clients(redis_server: RedisServer) -> int:
    client = redis_server.client()
    try:
        return int(client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
    finally:
        client.close()


def attempt(action: Callable[[], object]) -> int:
    """Run one churn action; a server mid-restart makes it fail, and churn goes on."""
    try:
        result = action()
    except Exception as exc:
        print(f"churn: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    return result if isinstance(result, int) else 1


def report(
    samples: list[tuple[float, float, int, int]], counts: dict[str, int], duration: float, exit_code: int
) -> int:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"poolwatch soak: {duration:.0f} s on {machine}; Python {platform.python_version()}; {when}")
    print(f"churn: {counts}")
    print(f"{'t (s)':>7} {'RSS (MiB)':>10} {'threads':>8} {'fds':>5}")
    step = max(1, len(samples) // 15)
    for t, rss, threads, fds in samples[::step]:
        print(f"{t:7.0f} {rss:10.1f} {threads:8d} {fds:5d}")
    third = len(samples) // 3
    second, last = samples[third : 2 * third], samples[2 * third :]
    verdicts = []
    for index, name, allowed in ((1, "RSS MiB", None), (2, "threads", THREADS_SLACK), (3, "fds", FDS_SLACK)):
        before = statistics.median(s[index] for s in second)
        after = statistics.median(s[index] for s in last)
        ok = after <= before * RSS_GROWTH if allowed is None else after <= before + allowed
        limit = f"x{RSS_GROWTH}" if allowed is None else f"+{allowed}"
        verdicts.append(ok)
        print(
            f"{name:8}: median second third {before:8.1f}, last third {after:8.1f} (allowed {limit}): "
            f"{'ok' if ok else 'GROWTH'}"
        )
    no_growth = all(verdicts) and exit_code == 0 and counts["scrape_errors"] == 0
    print(
        f"daemon exit status {exit_code}; scrape errors {counts['scrape_errors']} of "
        f"{counts['scrapes'] + counts['scrape_errors']}"
    )
    for error in ERRORS[:5]:
        print(f"  scrape error: {error}")
    print("verdict:", "no growth after warm-up" if no_growth else "FAILED")
    return 0 if no_growth else 1


if __name__ == "__main__":
    sys.exit(main())
