"""Real gunicorn and uvicorn workers against a real PostgreSQL, following prometheus_client's
multiprocess recipe: /metrics (any worker answers) shows every worker's pool, exactly.

The application (tests/fleet/app.py) names each worker's PostgreSQL sessions after the worker, so the
server itself says how many connections the live workers hold: the summed gauges must match it, also
after a worker is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poolwatch.instrument import slots
from tests.servers import LOOPBACK, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
POOL_SIZE = 2  # tests/fleet/app.py
INTERVAL = 0.2

GUNICORN_CONFIG = """
from prometheus_client import multiprocess

bind = "{bind}"
workers = {workers}
worker_class = "{worker_class}"
max_requests = {max_requests}
max_requests_jitter = 0
preload_app = {preload}
graceful_timeout = 10


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""


def wait_for(condition: Callable[[], object], what: str, deadline: float = 180.0) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` (and the last value) after ``deadline``
    (generous: on a loaded machine a replacement uvicorn worker took over a minute to import the app)."""
    end = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < end:
        last = condition()
        if last:
            return
        time.sleep(0.05)
    pytest.fail(f"not true after {deadline}s: {what} (last: {last!r})")


class App:
    """One multi-worker application process tree and what the tests read from it."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, directory: Path, name: str, pg: PostgresServer
    ):
        self.process = process
        self.base = f"http://{LOOPBACK}:{port}"
        self.directory = directory
        self.name = name
        self.pg = pg
        self.log: Path | None = None
        self.client = httpx.Client(timeout=30, follow_redirects=True)  # Starlette: /metrics -> /metrics/

    def work(self) -> int:
        # A new connection each time: the workers race to accept it, as behind a real balancer.
        response = self.client.get(f"{self.base}/work", headers={"Connection": "close"})
        response.raise_for_status()
        return int(response.text)

    def work_spread(self, count: int) -> list[int]:
        """``count`` requests eight at a time, and as many again until a second worker served one:
        one after the other on a quiet machine, the worker that answered last can win every accept."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            served = list(pool.map(lambda _: self.work(), range(count)))
            while len(set(served)) < 2 and len(served) < 20 * count:
                served += pool.map(lambda _: self.work(), range(count))
        return served

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        # A scrape may meet a worker that is being killed or replaced (gunicorn answers with an HTML
        # error page then): ask again, as Prometheus would at its next scrape.
        end = time.monotonic() + 60
        while True:
            response = self.client.get(f"{self.base}/metrics", headers={"Connection": "close"})
            if response.status_code == 200 or time.monotonic() > end:
                break
        response.raise_for_status()
        text = response.text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """The sum of the series ``name`` of the pool ``app`` with ``labels`` (any server label)."""
        wanted = {("pool", "app"), *labels.items()}
        return sum(
            value
            for (sample, pairs), value in self.samples().items()
            if sample == f"poolwatch_{name}" and wanted <= set(pairs)
        )

    def connections(self) -> float:
        return self.value("pool_connections", state="idle") + self.value("pool_connections", state="used")

    def server_sessions(self) -> int:
        return len([row for row in self.pg.backends() if row[1].startswith(f"{self.name}-")])

    def workers(self) -> set[int]:
        return {child.pid for child in psutil.Process(self.process.pid).children() if child.is_running()}

    def slot_count(self) -> int:
        return len(slots.slot_numbers(self.directory))

    def connections_match_server(self) -> tuple[float, int] | bool:
        gauges, sessions = self.connections(), self.server_sessions()
        return gauges == sessions or (gauges, sessions)


@pytest.fixture
def start_app(pg: PostgresServer, tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def start(server: str, *, max_requests: int = 0, preload: bool = False) -> App:
        port = free_port()
        directory = tmp_path / f"multiproc-{len(apps)}"
        directory.mkdir()
        name = f"fleet{len(apps)}{server}"
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "POOLWATCH_MULTIPROC_INTERVAL": str(INTERVAL),
            "FLEET_DATABASE_URL": pg.url(),
            "FLEET_APPLICATION": name,
            **({"FLEET_WARM_UP": "1"} if preload else {}),
        }
        if server == "uvicorn":
            command = [sys.executable, "-m", "uvicorn", "tests.fleet.app:asgi", "--workers", str(WORKERS)]
            command += ["--host", LOOPBACK, "--port", str(port), "--log-level", "warning"]
        else:
            worker_class = "uvicorn.workers.UvicornWorker" if server == "gunicorn-uvicorn" else server
            config = tmp_path / f"gunicorn-{len(apps)}.conf.py"
            bind = f"{LOOPBACK}:{port}"
            config.write_text(
                GUNICORN_CONFIG.format(
                    bind=bind,
                    workers=WORKERS,
                    worker_class=worker_class,
                    max_requests=max_requests,
                    preload=preload,
                )
            )
            target = "tests.fleet.app:asgi" if "uvicorn" in worker_class else "tests.fleet.app:wsgi"
            command = [sys.executable, "-m", "gunicorn", "-c", str(config), target]
        log = (tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)
        app = App(process, port, directory, name, pg)
        app.log = Path(log.name)
        apps.append(app)
        # Every worker (and with --preload the master, whose pool it is) has written its slot.
        pools = WORKERS + 1 if preload else WORKERS
        wait_for(lambda: _answers(app) and app.value("pool_size") == pools * POOL_SIZE, f"{server} up")
        return app

    yield start
    for app in apps:
        app.client.close()
        app.process.terminate()
        try:
            app.process.wait(30)
        except subprocess.TimeoutExpired:
            app.process.kill()
            app.process.wait()


def _answers(app: App) -> bool:
    try:
        return app.client.get(f"{app.base}/metrics").status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("server", ["sync", "gthread", "uvicorn", "gunicorn-uvicorn"])
def test_every_workers_pool_reaches_the_one_endpoint_exactly(
    start_app: Callable[..., App], server: str
) -> None:
    app = start_app(server)
    served = app.work_spread(60)
    assert len(set(served)) > 1, "more than one worker served"  # else the test proves nothing
    wait_for(lambda: app.value("pool_checkouts_total") == len(served), "checkouts equal requests served")
    wait_for(app.connections_match_server, "connection gauges equal the live workers' server sessions")
    assert app.value("pool_size") == WORKERS * POOL_SIZE
    assert app.value("pool_max_connections") == WORKERS * (POOL_SIZE + 1)
    assert app.value("pool_wait_seconds_count") == len(served)
    assert app.value("pool_inherited_checkouts_total") == 0

    # SIGKILL a worker that holds a connection: its share leaves the sums; the counters stay.
    victim = next(pid for pid in served if any(row[1] == f"{app.name}-{pid}" for row in app.pg.backends()))
    before = app.connections()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: app.server_sessions() < before, "the server saw the killed worker's sessions close")
    wait_for(app.connections_match_server, "connection gauges equal the live workers' server sessions")
    assert app.value("pool_checkouts_total") == len(served), "the killed worker's counts stay"
    wait_for(lambda: app.value("pool_size") == WORKERS * POOL_SIZE, "the replacement worker is counted")
    more = [app.work() for _ in range(30)]
    wait_for(
        lambda: app.value("pool_checkouts_total") == len(served) + len(more),
        "checkouts equal requests served, across the kill",
    )


def test_recycled_workers_keep_counters_exact_and_files_bounded(start_app: Callable[..., App]) -> None:
    app = start_app("sync", max_requests=50)
    served: list[int] = []
    seen_totals: list[float] = []
    for _ in range(8):
        served += [app.work() for _ in range(50)]
        seen_totals.append(app.value("pool_checkouts_total"))
    assert len(set(served)) >= 2 * WORKERS, "workers were recycled"
    assert seen_totals == sorted(seen_totals), "checkouts never went down"
    # A recycled worker writes its last counts as it exits: nothing is lost.
    wait_for(lambda: app.value("pool_checkouts_total") == len(served), "checkouts equal requests served")
    wait_for(app.connections_match_server, "connection gauges equal the live workers' server sessions")
    # Slots: the peak number of workers alive at once (a recycled one and its replacement overlap).
    assert app.slot_count() <= 2 * WORKERS, sorted(p.name for p in app.directory.iterdir())
    assert len(list(app.directory.iterdir())) <= 4 * app.slot_count()  # a lock and three files each


def test_a_pool_created_before_fork_is_flagged_and_still_counted_exactly(
    start_app: Callable[..., App],
) -> None:
    app = start_app("sync", preload=True)  # the master opens a connection, the workers inherit it
    served = [app.work() for _ in range(30)]
    # The master's own checkout counts once (in its slot), never again in the workers that inherited it.
    wait_for(lambda: app.value("pool_checkouts_total") == len(served) + 1, "checkouts exact under --preload")
    wait_for(lambda: app.value("pool_inherited_checkouts_total") == len(served), "inherited checkouts")
    assert app.log is not None
    warned = app.log.read_text().count("forked from it: both now share its connections")
    assert 1 <= warned <= len(set(served)), "warned once per worker that used the inherited pool"
