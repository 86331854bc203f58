"""What every benchmark shares: its own servers, processes under test, scrapes, statistics, charts.

Each benchmark starts its own PostgreSQL and Redis (``tests.servers``, the test suite's throw-away
servers on free loopback ports), starts poolwatch as a separate ``python -m poolwatch run`` process
(so its CPU time and resident memory are its own, read with psutil), and measures from the outside,
over HTTP, like Prometheus does. Run from the repository root: ``python -m benchmarks.<name>``.

A shared, noisy machine makes single numbers meaningless: every benchmark runs interleaved rounds
(each round measures every contender once, in a rotating order) and reports medians over rounds,
and ratios computed inside each round before taking their median.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import yaml

from tests.servers import LOOPBACK, PostgresServer, RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# What Prometheus 2.x sends: it prefers OpenMetrics and always asks for gzip.
SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "poolwatch-benchmark",
}
# A plain-text request without compression (curl, or a scraper configured for the text format).
PLAIN_HEADERS = {"Accept": "text/plain;version=0.0.4", "User-Agent": "poolwatch-benchmark"}


# ---------------------------------------------------------------------------------------- servers


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the servers and processes a benchmark started are stopped."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def servers() -> Iterator[tuple[PostgresServer, RedisServer]]:
    """A private PostgreSQL and Redis for one benchmark run, removed afterwards."""
    basedir = Path(tempfile.mkdtemp(prefix="poolwatch-bench-"))
    pg = PostgresServer()
    redis_server = RedisServer(basedir / "redis")
    try:
        pg.start()
        redis_server.start()
        yield pg, redis_server
    finally:
        redis_server.stop()
        pg.destroy()
        shutil.rmtree(basedir, ignore_errors=True)


def create_databases(pg: PostgresServer, names: Sequence[str]) -> None:
    """CREATE DATABASE each name, copying files (cheaper than WAL-logging a template per database)."""
    version = int(pg.execute("SHOW server_version_num")[0][0])
    strategy = " STRATEGY FILE_COPY" if version >= 150000 else ""
    existing = {row[0] for row in pg.execute("SELECT datname FROM pg_database")}
    for name in names:
        if name not in existing:
            pg.execute(f'CREATE DATABASE "{name}"{strategy}')


# --------------------------------------------------------------------------- processes under test


@dataclass
class Contender:
    """A process serving /metrics: poolwatch or a peer exporter."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    path: str = "/metrics"
    logfile: Path | None = None
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        return int(self.ps.memory_info().rss)

    def threads(self) -> int:
        return int(self.ps.num_threads())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def wait_http(
    port: int, path: str, timeout: float = 60, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {process.returncode}")
        try:
            status, _ = get(port, path)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered 200 on {LOOPBACK}:{port}{path} in {timeout}s")
        time.sleep(0.1)


def start_poolwatch(
    config: dict[str, Any], workdir: Path, name: str = "poolwatch", source: Path | None = None
) -> Contender:
    """``python -m poolwatch run`` with ``config`` (its http.listen is set to a free port here);
    ``source``: another source tree of poolwatch to run instead of this one (a baseline); with a
    ``.venv`` of its own it runs on that interpreter, as its dependencies may not be this version's."""
    port = free_port()
    config = {**config, "http": {"listen": f"{LOOPBACK}:{port}"}, "log": {"level": "WARNING"}}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    logfile = workdir / f"{name}.log"
    env = {**os.environ, "POOLWATCH_STATE_DIR": str(workdir)}
    python = sys.executable
    if source is not None:
        env["PYTHONPATH"] = str(source)
        if (own := source / ".venv" / "bin" / "python").exists():
            python = str(own)
    with logfile.open("wb") as log:
        process = subprocess.Popen(
            [python, "-m", "poolwatch", "run", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    contender = Contender(name, process, port, logfile=logfile)
    try:
        wait_http(port, "/readyz", process=process)
    except BaseException:
        contender.stop()
        print(logfile.read_text()[-2000:], file=sys.stderr)
        raise
    return contender


def ensure_debian_packages(binaries: dict[str, str]) -> None:
    """apt-get install the packages whose binaries are missing ({binary: package})."""
    missing = sorted({pkg for binary, pkg in binaries.items() if shutil.which(binary) is None})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"== installing {' '.join(missing)} with apt-get", file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def start_process(
    name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None
) -> Contender:
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = workdir / f"{name}.log"
    with logfile.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=workdir
        )
    contender = Contender(name, process, port, logfile=logfile)
    try:
        wait_http(port, "/metrics", process=process)
    except BaseException:
        contender.stop()
        print(logfile.read_text()[-2000:], file=sys.stderr)
        raise
    return contender


# ------------------------------------------------------------------------------------- scraping


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET on a fresh connection (as every contender is scraped); the body, gunzipped."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return response.status, body
    finally:
        connection.close()


def scrape(contender: Contender, headers: dict[str, str] = SCRAPE_HEADERS) -> tuple[float, bytes]:
    """Seconds for one scrape (connect, request, whole body), and the body; Prometheus' request
    unless ``headers`` say otherwise."""
    started = time.perf_counter()
    status, body = get(contender.port, contender.path, headers)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"{contender.name} answered {status}")
    return elapsed, body


@dataclass
class ScrapeRound:
    """N back-to-back scrapes of one contender."""

    latencies: list[float]
    cpu_seconds: float
    samples: int
    body_bytes: int

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    @property
    def cpu_per_scrape(self) -> float:
        return self.cpu_seconds / len(self.latencies)


def scrape_round(contender: Contender, count: int, headers: dict[str, str] = SCRAPE_HEADERS) -> ScrapeRound:
    cpu_before = contender.cpu_seconds()
    latencies = []
    body = b""
    for _ in range(count):
        elapsed, body = scrape(contender, headers)
        latencies.append(elapsed)
    cpu = contender.cpu_seconds() - cpu_before
    return ScrapeRound(latencies, cpu, count_samples(body), len(body))


def count_samples(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def parse_samples(body: bytes) -> dict[str, float]:
    """``name{labels}`` -> value, for the few series a benchmark reads back."""
    samples = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.rpartition(" ") if "}" not in line else _split_sample(line)
        with contextlib.suppress(ValueError):
            samples[key] = float(rest.split()[0])
    return samples


def _split_sample(line: str) -> tuple[str, str, str]:
    end = line.rindex("}") + 1
    return line[:end], " ", line[end:].strip()


def metrics(contender: Contender) -> dict[str, float]:
    status, body = get(contender.port, "/metrics", {"Accept": "text/plain"})
    if status != 200:
        raise RuntimeError(f"{contender.name} answered {status}")
    return parse_samples(body)


def series_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for key, value in samples.items():
        base = key.split("{", 1)[0]
        if base == name and all(w in key for w in wanted):
            total += value
    return total


# ----------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 500 values is the 495th smallest)."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """``median [min-max]`` over rounds, for the printed tables."""
    return f"{median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def rotate(items: Sequence[Any], round_no: int) -> list[Any]:
    """Round ``round_no``'s order: every contender goes first equally often."""
    shift = round_no % len(items)
    return [*items[shift:], *items[:shift]]


# ------------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures were measured on, for the README and the JSON results."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "postgres": _version_of([str(_pg_binary()), "--version"]),
        "redis": _version_of(["redis-server", "--version"]),
    }


def _pg_binary() -> Path:
    from tests.servers import pg_bindir

    return pg_bindir() / "postgres"


def _version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def save_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {**data, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib as mpl
    except ImportError:
        raise SystemExit("matplotlib is missing: pip install -e '.[bench]'") from None
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def blackhole() -> socket.socket:
    """A listening socket nobody accepts on: connections complete, then never get an answer."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(1024)
    return sock
