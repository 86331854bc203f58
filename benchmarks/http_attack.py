"""The endpoint under load and under attack: this checkout against a baseline revision, same run.

    python -m benchmarks.http_attack [--baseline main] [--rounds 5] [--tls-garbage 5000]

Starts its own PostgreSQL and Redis and two poolwatch processes watching them (1 PostgreSQL + 1
Redis target, basic auth with a cost-10 bcrypt hash, default http limits): ``after`` runs this
checkout, ``before`` runs ``git archive <baseline>`` unpacked in a temporary directory. Each round
runs every scenario against both, the order rotating between rounds:

* ``sequential``: one scraper, 200 scrapes back to back on a keep-alive connection: the cost of
  the HTTP path itself.
* ``concurrent``: 50 scrapers, each on its own keep-alive connection (as Prometheus keeps one per
  target), scraping all at the same instant, 10 times, with the headers Prometheus sends and
  verified credentials.
* ``flood``: 100 new idle connections a second (held open, never sending) while 30 scrapes are
  made one after another on fresh connections, 0.1 s apart.
* ``auth_attack``: 50 clients sending wrong passwords as fast as they are answered, while one
  verified scraper scrapes 50 times on a keep-alive connection.

Per scenario and contender: scrapes that succeeded, latency p50/p99 (medians over rounds), scrapes
over 0.5 s, retries on a new connection (see ``scrape``), process CPU seconds, and the process's
threads idle and at most during the scenario. Once, on a pair of
TLS-serving processes: ``--tls-garbage`` plain-HTTP connections to the TLS port, then RSS growth,
the CPU the process burns in the 3 s after, and whether a TLS scrape is still answered. Writes
benchmarks/results/http_attack.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import os
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bcrypt
import psutil
import yaml
from typing_extensions import Self

from benchmarks import harness
from benchmarks.harness import SCRAPE_HEADERS, median, percentile, spread
from tests.servers import LOOPBACK, free_port

USER, PASSWORD = "prometheus", "scrape-Pa55word"
SCENARIOS = ("sequential", "concurrent", "flood", "auth_attack")


class Process:
    """A poolwatch process of one revision, with the client side's view of it."""

    def __init__(self, name: str, config: dict[str, Any], workdir: Path, pythonpath: str | None) -> None:
        self.name = name
        self.port = free_port()
        self.tls = "tls" in config["http"]
        config = {**config, "http": {**config["http"], "listen": f"{LOOPBACK}:{self.port}"}}
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, "log": {"level": "WARNING"}}))
        env = {**os.environ, "POOLWATCH_STATE_DIR": str(workdir)}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "poolwatch", "run", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        self.ps = psutil.Process(self.process.pid)
        self.context = None
        if self.tls:
            self.context = ssl.create_default_context(cafile=config["http"]["tls"]["cert_file"])
        self.wait_ready()

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection(LOOPBACK, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if scrape(self.connection(), "/readyz")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout}s")
            time.sleep(0.1)

    def settle(self, threads: int, timeout: float = 30) -> None:
        """Wait until the process is back to ``threads`` threads (a baseline's crowd has drained)."""
        deadline = time.monotonic() + timeout
        while self.ps.num_threads() > threads and time.monotonic() < deadline:
            time.sleep(0.1)
        self.wait_ready()

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def scrape(
    connection: http.client.HTTPConnection, path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, float]:
    """One request on ``connection`` (reconnecting if the server closed it): status and seconds.

    As Go's client (Prometheus) does, a request that fails on a reused keep-alive connection
    before any answer (the server closed it meanwhile) is sent once more on a new connection;
    ``RETRIED`` counts those.
    """
    started = time.perf_counter()
    for attempt in (1, 2):
        reused = connection.sock is not None
        try:
            connection.request("GET", path, headers={**SCRAPE_HEADERS, **AUTH, **(headers or {})})
            response = connection.getresponse()
            response.read()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()
            if attempt == 2 or not reused:
                raise
            RETRIED.append(path)
    return response.status, time.perf_counter() - started


RETRIED: list[str] = []


class ThreadSampler:
    """The most threads the process had while the block ran (sampled every 20 ms)."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.most = process.ps.num_threads()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.most = max(self.most, self.process.ps.num_threads())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _outcome(latencies: list[float], total: int, cpu: float, threads: int) -> dict[str, Any]:
    retried = len(RETRIED)
    RETRIED.clear()
    return {
        "retried": retried,
        "over_500ms": sum(latency > 0.5 for latency in latencies),
        "ok": len(latencies),
        "total": total,
        "p50_ms": percentile(latencies, 50) * 1e3 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1e3 if latencies else None,
        "cpu_s": cpu,
        "threads_max": threads,
    }


def sequential(process: Process, scrapes: int = 200) -> dict[str, Any]:
    latencies: list[float] = []
    connection = process.connection(timeout=30)
    cpu = process.cpu()
    with ThreadSampler(process) as sampler:
        for _ in range(scrapes):
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, took = scrape(connection)
                if status == 200:
                    latencies.append(took)
    connection.close()
    return _outcome(latencies, scrapes, process.cpu() - cpu, sampler.most)


def concurrent(process: Process, scrapers: int = 50, each: int = 10) -> dict[str, Any]:
    latencies: list[float] = []
    barrier = threading.Barrier(scrapers)

    def scraper() -> None:
        connection = process.connection(timeout=30)
        for _ in range(each):
            barrier.wait()  # all 50 at once, every time: the worst case of aligned scrapers
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, took = scrape(connection)
                if status == 200:
                    latencies.append(took)
        connection.close()

    cpu = process.cpu()
    with ThreadSampler(process) as sampler:
        threads = [threading.Thread(target=scraper) for _ in range(scrapers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return _outcome(latencies, scrapers * each, process.cpu() - cpu, sampler.most)


def flood(process: Process, rate: float = 100, scrapes: int = 30) -> dict[str, Any]:
    stop = threading.Event()
    idle: list[Any] = []

    def flooder() -> None:
        import socket

        started = time.monotonic()
        for n in itertools.count():
            if stop.wait(max(0.0, started + n / rate - time.monotonic())):
                return
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection((LOOPBACK, process.port), timeout=2))

    latencies: list[float] = []
    cpu = process.cpu()
    with ThreadSampler(process) as sampler:
        thread = threading.Thread(target=flooder, daemon=True)
        thread.start()
        time.sleep(1.0)  # let the flood reach the connection cap first
        for _ in range(scrapes):
            connection = process.connection(timeout=5)
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, took = scrape(connection)
                if status == 200:
                    latencies.append(took)
            connection.close()
            time.sleep(0.1)
        stop.set()
        thread.join()
    for sock in idle:
        sock.close()
    return _outcome(latencies, scrapes, process.cpu() - cpu, sampler.most) | {"idle_opened": len(idle)}


def auth_attack(process: Process, attackers: int = 50, scrapes: int = 50) -> dict[str, Any]:
    stop = threading.Event()
    answers: dict[int, int] = {}
    guesses = itertools.count()

    def attacker() -> None:
        while not stop.is_set():
            connection = process.connection(timeout=30)
            wrong = base64.b64encode(f"{USER}:guess-{next(guesses)}".encode()).decode()
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = scrape(connection, headers={"Authorization": f"Basic {wrong}"})
                answers[status] = answers.get(status, 0) + 1
            connection.close()

    scraper = process.connection(timeout=30)
    scrape(scraper)  # verified before the attack, as a running Prometheus is
    latencies: list[float] = []
    cpu = process.cpu()
    with ThreadSampler(process) as sampler:
        threads = [threading.Thread(target=attacker, daemon=True) for _ in range(attackers)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        for _ in range(scrapes):
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, took = scrape(scraper)
                if status == 200:
                    latencies.append(took)
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
    scraper.close()
    result = _outcome(latencies, scrapes, process.cpu() - cpu, sampler.most)
    return result | {"attacker_answers": {str(k): v for k, v in sorted(answers.items())}}


def tls_garbage(process: Process, count: int) -> dict[str, Any]:
    """Plain HTTP to the TLS port ``count`` times; what it leaves behind."""
    import socket

    rss = process.ps.memory_info().rss
    started = time.monotonic()
    for _ in range(count):
        with (
            contextlib.suppress(OSError),
            socket.create_connection((LOOPBACK, process.port), timeout=5) as sock,
        ):
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            while sock.recv(65536):
                pass
    took = time.monotonic() - started
    time.sleep(2)
    cpu = process.cpu()
    time.sleep(3)
    idle_cpu = (process.cpu() - cpu) / 3
    status: int | str
    try:
        status, latency = scrape(process.connection(timeout=10))
    except (OSError, http.client.HTTPException) as exc:
        status, latency = repr(exc), float("nan")
    return {
        "connections": count,
        "seconds": took,
        "rss_growth_mb": (process.ps.memory_info().rss - rss) / 2**20,
        "cpu_share_after": idle_cpu,
        "tls_scrape_after": status,
        "tls_scrape_ms": latency * 1e3,
        "threads_after": process.ps.num_threads(),
    }


def baseline_tree(revision: str, into: Path) -> str:
    archive = into / "baseline.tar"
    subprocess.run(
        ["git", "-C", str(harness.ROOT), "archive", "--format=tar", "-o", str(archive), revision], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    found = subprocess.run(
        [sys.executable, "-c", "import poolwatch; print(poolwatch.__file__)"],
        env={**os.environ, "PYTHONPATH": str(into / "baseline")},
        capture_output=True,
        text=True,
        check=True,
        cwd=into,
    ).stdout
    assert found.startswith(str(into / "baseline")), f"the baseline does not shadow this checkout: {found}"
    return str(into / "baseline")


def certificate(workdir: Path) -> dict[str, str]:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return {"cert_file": str(workdir / "cert.pem"), "key_file": str(workdir / "key.pem")}


def run(baseline: str, rounds: int, garbage: int) -> dict[str, Any]:
    info = harness.machine()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    with harness.servers() as (pg, redis_server), tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pythonpath = {"before": baseline_tree(baseline, workdir), "after": None}
        targets = [
            {"name": "pg", "kind": "postgres", "url": pg.url()},
            {"name": "cache", "kind": "redis", "url": redis_server.url()},
        ]
        config = {"http": {"basic_auth_users": {USER: hashed}}, "targets": targets}
        processes = [Process(name, config, workdir, path) for name, path in pythonpath.items()]
        results: dict[str, dict[str, list[dict[str, Any]]]] = {
            p.name: {s: [] for s in SCENARIOS} for p in processes
        }
        idle_threads = {}
        try:
            for process in processes:
                concurrent(process, scrapers=5, each=4)  # warm up
                idle_threads[process.name] = process.ps.num_threads()
            for round_no in range(rounds):
                for process in harness.rotate(processes, round_no):
                    for scenario in SCENARIOS:
                        outcome = globals()[scenario](process)
                        results[process.name][scenario].append(outcome)
                        process.settle(idle_threads[process.name])
                print(f"round {round_no + 1}/{rounds} done", file=sys.stderr)
        finally:
            for process in processes:
                process.stop()
        tls_config = {"http": {"tls": certificate(workdir)}, "targets": targets}
        garbage_results = {}
        for name, path in pythonpath.items():
            process = Process(f"{name}-tls", tls_config, workdir, path)
            try:
                garbage_results[name] = tls_garbage(process, garbage)
            finally:
                process.stop()
    return summarize(info, baseline, rounds, results, idle_threads, garbage_results)


def summarize(
    info: dict[str, Any],
    baseline: str,
    rounds: int,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    idle_threads: dict[str, int],
    garbage: dict[str, Any],
) -> dict[str, Any]:
    summary: dict[str, Any] = {"machine": info, "baseline": baseline, "rounds": rounds, "scenarios": {}}
    for scenario in SCENARIOS:
        per: dict[str, Any] = {}
        for name, by_scenario in results.items():
            outcomes = by_scenario[scenario]
            per[name] = {
                "ok": [o["ok"] for o in outcomes],
                "total": outcomes[0]["total"],
                "p50_ms": [o["p50_ms"] for o in outcomes],
                "p99_ms": [o["p99_ms"] for o in outcomes],
                "cpu_s": [o["cpu_s"] for o in outcomes],
                "threads_max": [o["threads_max"] for o in outcomes],
                "threads_idle": idle_threads[name],
                "extra": [
                    {k: v for k, v in o.items() if k not in {"ok", "total", "p50_ms", "p99_ms", "cpu_s"}}
                    for o in outcomes
                ],
            }
        before, after = results["before"][scenario], results["after"][scenario]
        paired = [(a, b) for a, b in zip(after, before, strict=True) if a["p50_ms"] and b["p50_ms"]]
        per["ratio_after_over_before"] = {
            "p50": median([a["p50_ms"] / b["p50_ms"] for a, b in paired]) if paired else None,
            "p99": median([a["p99_ms"] / b["p99_ms"] for a, b in paired]) if paired else None,
        }
        summary["scenarios"][scenario] = per
    summary["tls_garbage"] = garbage
    return summary


def report(summary: dict[str, Any]) -> None:
    print(f"\nmachine: {summary['machine']}")
    print(f"baseline {summary['baseline']}, {summary['rounds']} rounds; median [min-max] over rounds")
    header = (
        f"{'scenario':<12} {'rev':<7} {'ok':>14} {'p50 ms':>22} {'p99 ms':>22} {'CPU s':>20} "
        "threads  >0.5s retried"
    )
    print(header)
    for scenario, per in summary["scenarios"].items():
        for name in ("before", "after"):
            c = per[name]
            p50 = [v for v in c["p50_ms"] if v is not None] or [float("nan")]
            p99 = [v for v in c["p99_ms"] if v is not None] or [float("nan")]
            print(
                f"{scenario:<12} {name:<7} {spread(c['ok']):>10}/{c['total']:<3} {spread(p50):>22} "
                f"{spread(p99):>22} {spread(c['cpu_s']):>20} {c['threads_idle']}->{max(c['threads_max'])}"
                f"  {sum(e['over_500ms'] for e in c['extra'])} {sum(e['retried'] for e in c['extra'])}"
            )
        ratio = per["ratio_after_over_before"]
        if ratio["p50"] is not None:
            print(f"{'':<12} after/before: p50 {ratio['p50']:.3f}x, p99 {ratio['p99']:.3f}x")
    for name, garbage in summary["tls_garbage"].items():
        print(f"tls garbage {name}: {garbage}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--tls-garbage", type=int, default=5000, help="plain-HTTP connections to the TLS port"
    )
    args = parser.parse_args()
    harness.exit_on_sigterm()
    summary = run(args.baseline, args.rounds, args.tls_garbage)
    report(summary)
    print(f"\nwrote {harness.save_results('http_attack', summary)}")


if __name__ == "__main__":
    main()
