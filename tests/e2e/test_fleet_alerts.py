"""End to end, a fleet of workers against one small server, with the shipped alerts.

The example application (examples/fastapi) runs under real gunicorn, four UvicornWorkers recycled
every 50 requests, later under ``uvicorn --workers 2``; a PostgreSQL accepts 22 ordinary sessions
(max_connections 25, 3 reserved for superusers); ``poolwatch run`` takes its census; a real
Prometheus scrapes the daemon and both application servers and evaluates the shipped rules on
test_prometheus's compressed clock (every minute is 2 s: PoolwatchPoolExhausted's ``for: 1m`` is 2 s,
PoolwatchFleetCanExhaustServer's ``for: 15m`` is 30 s; ``compress`` rewrites nothing else).

Everything asserted about the metrics is read back from Prometheus' HTTP API, as an operator sees it:

1. slow requests held on one worker exhaust its pool: PoolwatchPoolExhausted fires for the gunicorn
   instance, and the use-time and leak series name the route template ``GET /report``, never a path;
2. the slow load stops: PoolwatchPoolExhausted resolves;
3. four workers x (6 + 2) = 32 possible connections (plus the daemon's 2) against 22:
   PoolwatchFleetCanExhaustServer fires;
4. workers recycled by max_requests, and one killed with SIGKILL, while quick requests flow: no
   counter of the application ever went down (its raw samples, and ``resets()`` = 0), the checkouts
   count every request answered by a worker that was not killed, and the gauges come back to four
   workers' worth and to the connections the server itself sees;
5. the fleet is replaced by a smaller one: ``uvicorn --workers 2`` (16 possible connections) is
   scraped as a second instance of the job before gunicorn stops, as in a blue-green deploy; its
   pools are exported (also after one of its workers is killed), and once gunicorn is gone
   PoolwatchFleetCanExhaustServer resolves while the new fleet's ceiling, 16 + 2, is what the rule
   sees. A ceiling above the limit only drops with fewer workers or smaller pools (the runbook's
   remedy), so that is how the test resolves it.

A worker being replaced exports no pool until it has imported the application: the recorded
ceiling dips while it does (a quarter of the fleet per worker here). The alert reads the highest
ceiling of the last two minutes, so in production a dip does not start its fifteen minutes again
(deploy/prometheus/tests covers that). On this clock the window is four seconds, less than a new
worker may take to start on a loaded machine, so the test waits for the alert to fire while no
worker is being replaced, and recycles them afterwards; the numbers are such that one worker
missing still leaves the ceiling above the limit.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import pytest
import yaml

from tests.e2e.test_prometheus import Prometheus, compress, get_json_status, start, stop
from tests.ops.tools import ROOT, RULES, tool
from tests.servers import LOOPBACK, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.servers import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EXAMPLE = ROOT / "examples" / "fastapi"
# The server: what the census exports as server_max_connections is max_connections less the slots
# reserved for superusers (the daemon connects as one; the application does not).
MAX_CONNECTIONS, SUPERUSER_RESERVED = 25, 3
LIMIT = MAX_CONNECTIONS - SUPERUSER_RESERVED
# Each worker's pool, and the daemon's own pool to the same server (it counts in the ceiling too).
POOL_SIZE, MAX_OVERFLOW = 6, 2
PER_WORKER = POOL_SIZE + MAX_OVERFLOW
DAEMON_POOL = 2
GUNICORN_WORKERS, UVICORN_WORKERS = 4, 2
MAX_REQUESTS = 50
# Slow requests hold a connection HOLD seconds, longer than the leak threshold; a caller waits
# POOL_TIMEOUT seconds for a connection. Two more holders than one worker's pool has connections.
HOLD, POOL_TIMEOUT, LEAK_THRESHOLD = 5, 2, 2
HOLDERS = PER_WORKER + 2
# Quick requests during the recycling phase: more than four workers can answer without recycling.
QUICK_REQUESTS, QUICK_THREADS = 400, 3
SLOW_ROUTE, QUICK_ROUTE = "GET /report", "GET /orders/{order_id}"
ROLE, ROLE_PASSWORD = "fleet_app", "fleet-app-password"
JOB = "app"
# Generous, for a loaded two-core machine, where a new worker takes seconds to import the application.
DEADLINE = 120.0

# The scenario only proves something with these numbers: the full fleet, and the fleet less one worker
# (killed, or being replaced), can exhaust the server; the small fleet cannot; one worker's holders
# are more than its pool has connections.
assert GUNICORN_WORKERS * PER_WORKER + DAEMON_POOL > LIMIT
assert (GUNICORN_WORKERS - 1) * PER_WORKER + DAEMON_POOL > LIMIT
assert UVICORN_WORKERS * PER_WORKER + DAEMON_POOL <= LIMIT
assert HOLDERS > PER_WORKER
assert HOLD > LEAK_THRESHOLD


def until(
    what: str,
    observe: Callable[[], Any],
    accept: Callable[[Any], bool],
    timeout: float = DEADLINE,
    explain: Callable[[], object] | None = None,
) -> Any:
    """Poll ``observe`` until ``accept`` takes its value; fail naming ``what`` and the last value (and
    what ``explain`` returns then)."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while True:
        try:
            seen = observe()
        except (OSError, httpx.HTTPError) as exc:
            seen = exc
        else:
            if accept(seen):
                return seen
        if time.monotonic() > deadline:
            context = f"; {explain()}" if explain is not None else ""
            pytest.fail(f"after {timeout:g}s, {what}: last seen {seen!r}{context}")
        time.sleep(0.5)


@dataclass
class App:
    """One application server process tree (gunicorn or uvicorn) and its scrape target."""

    process: subprocess.Popen[str]
    port: int
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, to say why it is not up."""
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    @property
    def instance(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.instance}"

    def workers(self) -> set[int]:
        """The live worker processes: not a killed one the server has not reaped yet, nor the
        resource tracker multiprocessing starts next to uvicorn's workers."""
        workers = set()
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                tracker = "resource_tracker" in " ".join(child.cmdline())
                if child.status() != psutil.STATUS_ZOMBIE and not tracker:
                    workers.add(child.pid)
        return workers


@dataclass
class Stack:
    pg: PostgresServer
    prometheus: Prometheus
    gunicorn_port: int
    uvicorn_port: int
    start_app: Callable[[list[str], int, dict[str, str]], App]

    @property
    def endpoint(self) -> str:
        return f"{self.pg.host}:{self.pg.port}"

    def value(self, expr: str) -> float | None:
        """The single value of an instant query; None when it has no result."""
        result = self.prometheus.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alert_states(self, alert: str, **labels: str) -> list[str]:
        """The states (pending, firing) of the alert's active instances with these labels."""
        return [a["state"] for a in self.prometheus.alerts(alert, **labels)]

    def history(self, selector: str, seconds: int = 120) -> list[tuple[str, list[str]]]:
        """Every sample of the last ``seconds`` of the series ``selector``, to say what was seen."""
        return [
            (str(s["metric"]), [v for _, v in s["values"]])
            for s in self.prometheus.query(f"{selector}[{seconds}s]")
        ]

    def server_sessions(self) -> int:
        rows = self.pg.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (ROLE,))
        return int(rows[0][0])


@pytest.fixture
def stack(pg_factory: Callable[..., PostgresServer], tmp_path: Path) -> Iterator[Stack]:
    """A small PostgreSQL, ``poolwatch run`` watching it, and Prometheus scraping the daemon and the
    two ports the application servers will listen on (job ``app``)."""
    pg = pg_factory(
        {"max_connections": MAX_CONNECTIONS, "superuser_reserved_connections": SUPERUSER_RESERVED}
    )
    pg.create_role(ROLE, ROLE_PASSWORD)
    processes: list[subprocess.Popen[str]] = []
    try:
        daemon_port = free_port()
        config = {
            "http": {"listen": f"{LOOPBACK}:{daemon_port}"},
            "log": {"level": "WARNING"},
            "targets": [
                {
                    "name": "pg",
                    "kind": "postgres",
                    "url": pg.url(),
                    "pool": {"size": DAEMON_POOL, "max_overflow": 0, "timeout": 2},
                    "probe": {"interval": 1, "timeout": 1},
                    "census": {"interval": 1, "timeout": 1},
                }
            ],
        }
        (tmp_path / "poolwatch.yaml").write_text(yaml.safe_dump(config))
        processes.append(
            start([sys.executable, "-m", "poolwatch", "run", "--config", str(tmp_path / "poolwatch.yaml")])
        )
        daemon = f"http://{LOOPBACK}:{daemon_port}"
        until("poolwatch ready", lambda: get_json_status(daemon + "/readyz"), lambda status: status == 200)

        gunicorn_port, uvicorn_port = free_port(), free_port()
        (tmp_path / "rules.yml").write_text(compress(RULES.read_text(encoding="utf-8")))
        prometheus_port = free_port()
        prometheus_config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [
                {"job_name": "poolwatch", "static_configs": [{"targets": [f"{LOOPBACK}:{daemon_port}"]}]},
                {
                    "job_name": JOB,
                    "static_configs": [
                        {"targets": [f"{LOOPBACK}:{gunicorn_port}", f"{LOOPBACK}:{uvicorn_port}"]}
                    ],
                },
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
        processes.append(
            start(
                [
                    tool("prometheus", "the Debian prometheus package"),
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address={LOOPBACK}:{prometheus_port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        api = Prometheus(f"http://{LOOPBACK}:{prometheus_port}")
        until("Prometheus ready", lambda: get_json_status(api.base_url + "/-/ready"), lambda s: s == 200)

        def start_app(command: list[str], port: int, settings: dict[str, str]) -> App:
            directory = tmp_path / f"metrics-{port}"
            directory.mkdir()  # empty at start, as prometheus_client's recipe says
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "DATABASE_URL": pg.url(ROLE, ROLE_PASSWORD),
                "PROMETHEUS_MULTIPROC_DIR": str(directory),
                "POOLWATCH_MULTIPROC_INTERVAL": "0.5",
                "POOL_SIZE": str(POOL_SIZE),
                "POOL_MAX_OVERFLOW": str(MAX_OVERFLOW),
                "POOL_TIMEOUT": str(POOL_TIMEOUT),
                "POOL_LEAK_THRESHOLD": str(LEAK_THRESHOLD),
                **settings,
            }
            # The application's log (a leak warning per slow request, a traceback per pool timeout)
            # goes to a file next to Prometheus' data, not into the test's output.
            log = tmp_path / f"app-{port}.log"
            with log.open("w") as output:
                process = start(command, env=env, stdout=output, stderr=subprocess.STDOUT)
            processes.append(process)
            return App(process, port, log)

        yield Stack(pg, api, gunicorn_port, uvicorn_port, start_app)
    finally:
        for process in reversed(processes):
            stop(process)


class PinnedLoad:
    """Threads holding the slow route, all on one worker, so that worker's pool is exhausted.

    Any worker may accept a new connection, so each thread opens connections until one lands on the
    chosen worker (the first one a thread reaches), then sends slow requests on it. A pool timeout
    answers 500 and the server closes the connection: the thread pins itself again. When the chosen
    worker goes (recycled by max_requests, it closes its connections), the next worker a thread
    reaches is chosen."""

    def __init__(self, base: str, threads: int) -> None:
        self.base = base
        self.target: int | None = None
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.threads = [threading.Thread(target=self._run, name=f"holder-{n}") for n in range(threads)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopped.set()
        deadline = time.monotonic() + HOLD + POOL_TIMEOUT + DEADLINE
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"

    def _count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def _run(self) -> None:
        while not self.stopped.is_set():
            with httpx.Client(base_url=self.base, timeout=60) as client:
                try:
                    self._hold(client)
                except httpx.HTTPError as exc:
                    self._count(type(exc).__name__)

    def _hold(self, client: httpx.Client) -> None:
        probe = client.get("/orders/0")
        if probe.status_code != 200:  # a probe that reached the exhausted worker timed out too
            self._count(f"probe {probe.status_code}")
            return
        worker = int(probe.json()["worker"])
        with self.lock:
            if self.target is None:
                self.target = worker
            if worker != self.target:
                self.outcomes["probe elsewhere"] += 1
                return
        try:
            while not self.stopped.is_set():
                response = client.get("/report", params={"seconds": HOLD})
                self._count(str(response.status_code))
                if response.status_code != 200:
                    return
        except httpx.TransportError:
            with self.lock:
                if self.target == worker:
                    self.target = None
            raise


def test_fleet_alerts_fire_and_resolve_through_recycling_and_a_killed_worker(stack: Stack) -> None:
    api = stack.prometheus
    started = time.monotonic()

    def log(what: str) -> None:
        print(f"{time.monotonic() - started:5.1f}s {what}")

    gunicorn = stack.start_app(
        [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLE / "gunicorn.conf.py")],
        stack.gunicorn_port,
        {
            "BIND": f"{LOOPBACK}:{stack.gunicorn_port}",
            "WORKERS": str(GUNICORN_WORKERS),
            "MAX_REQUESTS": str(MAX_REQUESTS),
            "MAX_REQUESTS_JITTER": "0",
        },
    )
    g = f'job="{JOB}", instance="{gunicorn.instance}", pool="orders"'
    until(
        f"gunicorn's {GUNICORN_WORKERS} workers exported through Prometheus",
        lambda: stack.value(f"sum(poolwatch_pool_size{{{g}}})"),
        lambda v: v == GUNICORN_WORKERS * POOL_SIZE,
        explain=gunicorn.log_tail,
    )
    initial_workers = gunicorn.workers()
    assert len(initial_workers) == GUNICORN_WORKERS
    assert stack.alert_states("PoolwatchPoolExhausted", instance=gunicorn.instance) == []
    log(f"gunicorn up, workers {sorted(initial_workers)}")

    # 1. One worker's pool exhausted: the alert fires, and the holder is the route template.
    load = PinnedLoad(gunicorn.base, HOLDERS)
    load.start()
    try:
        until(
            "PoolwatchPoolExhausted firing for gunicorn's pool",
            lambda: stack.alert_states(
                "PoolwatchPoolExhausted", job=JOB, instance=gunicorn.instance, pool="orders"
            ),
            lambda states: states == ["firing"],
            explain=lambda: f"requests {dict(load.outcomes)}",
        )
        log(f"PoolwatchPoolExhausted firing; requests so far {dict(load.outcomes)}")
        assert (stack.value(f"sum(poolwatch_pool_timeouts_total{{{g}}})") or 0) > 0
        until(
            f"use time and leaks of pool orders held by {SLOW_ROUTE!r}",
            lambda: (
                stack.value(f'sum(poolwatch_pool_use_seconds_count{{{g}, holder="{SLOW_ROUTE}"}})'),
                stack.value(f'sum(poolwatch_pool_leaks_total{{{g}, holder="{SLOW_ROUTE}"}})'),
            ),
            lambda counts: all(c is not None and c > 0 for c in counts),
        )
        for family in ("poolwatch_pool_use_seconds_count", "poolwatch_pool_leaks_total"):
            holders = set(api.label_values("holder", f"{family}{{{g}}}"))
            assert SLOW_ROUTE in holders, (family, holders)
            # Templates only: the probes asked for /orders/0, which is no label.
            assert holders <= {SLOW_ROUTE, QUICK_ROUTE}, (
                f"{family}: holders that are no route template: {holders}"
            )
    finally:
        load.stop()
    stopped_at = time.monotonic()
    log(f"slow load stopped: {dict(load.outcomes)}")
    assert load.outcomes["200"] > 0, "no slow request got a connection"

    # 2. The slow load has stopped: the exhaustion alert resolves.
    until(
        "PoolwatchPoolExhausted resolved once the load stopped",
        lambda: stack.alert_states("PoolwatchPoolExhausted", instance=gunicorn.instance),
        lambda states: states == [],
    )
    log(f"PoolwatchPoolExhausted resolved {time.monotonic() - stopped_at:.1f}s after the load stopped")

    # 3. The fleet's ceiling is above what the server accepts.
    until(
        "PoolwatchFleetCanExhaustServer firing",
        lambda: stack.alert_states("PoolwatchFleetCanExhaustServer", server_endpoint=stack.endpoint),
        lambda states: states == ["firing"],
        explain=lambda: stack.history(
            f'poolwatch:server_pool_ceiling:sum{{server_endpoint="{stack.endpoint}"}}'
        ),
    )
    log("PoolwatchFleetCanExhaustServer firing")
    assert stack.value(f'poolwatch:server_max_connections:min{{server_endpoint="{stack.endpoint}"}}') == LIMIT
    until(
        "the recorded ceiling: gunicorn's four pools and the daemon's",
        lambda: stack.value(f'poolwatch:server_pool_ceiling:sum{{server_endpoint="{stack.endpoint}"}}'),
        lambda v: v == GUNICORN_WORKERS * PER_WORKER + DAEMON_POOL,
    )

    # 4. Workers recycled (max_requests) and one killed with SIGKILL while quick requests flow.
    checkouts = f"sum(poolwatch_pool_checkouts_total{{{g}}})"
    checkouts_before = stack.value(checkouts) or 0.0
    served, failed, victim = recycle_and_kill(gunicorn)
    log(f"killed {victim}; quick requests answered by {dict(served)}, failed {dict(failed)}")
    current = until(
        f"gunicorn back to {GUNICORN_WORKERS} workers",
        gunicorn.workers,
        lambda workers: len(workers) == GUNICORN_WORKERS and victim not in workers,
    )
    recycled = initial_workers - current - {victim}
    assert len(recycled) >= 2, f"max_requests={MAX_REQUESTS} recycled {sorted(recycled)} only"
    assert sum(failed.values()) <= QUICK_THREADS, (
        f"more failures than requests in flight at the kill: {failed}"
    )
    # Gauges: four workers' worth again, and the connections the server itself sees.
    until(
        "gauges of four workers after recycling and the kill (size, ceiling, in use)",
        lambda: (
            stack.value(f"sum(poolwatch_pool_size{{{g}}})"),
            stack.value(f"sum(poolwatch_pool_max_connections{{{g}}})"),
            stack.value(f'sum(poolwatch_pool_connections{{{g}, state="used"}})'),
        ),
        lambda v: v == (GUNICORN_WORKERS * POOL_SIZE, GUNICORN_WORKERS * PER_WORKER, 0),
    )
    until(
        "open connections exported (idle + used) equal to the application's sessions on the server",
        lambda: (stack.value(f"sum(poolwatch_pool_connections{{{g}}})"), stack.server_sessions()),
        lambda v: v[0] == v[1],
    )
    # Counters: the checkouts count every request answered by a worker that was not killed (a
    # recycled worker writes its last counts as it exits; the killed one loses at most its last
    # interval's), and no counter went down at any scrape since gunicorn started.
    answered_by_survivors = sum(n for worker, n in served.items() if worker != victim)
    until(
        "checkouts counting every request answered by the surviving workers",
        lambda: stack.value(checkouts),
        lambda v: v is not None and v >= checkouts_before + answered_by_survivors,
    )
    window = f"{int(time.monotonic() - started) + 10}s"
    series = api.query(f'{{{g}, __name__=~"poolwatch_pool_.+(_total|_count|_sum|_bucket)"}}[{window}]')
    assert len(series) > 10, series
    went_down = {}
    for one in series:
        values = [float(v) for _, v in one["values"]]
        if values != sorted(values):
            went_down[str(sorted(one["metric"].items()))] = values
    assert went_down == {}, f"counters that went down: {went_down}"
    (checkout_series,) = [s for s in series if s["metric"]["__name__"] == "poolwatch_pool_checkouts_total"]
    assert len(checkout_series["values"]) > 10, checkout_series
    assert stack.value(f"resets(poolwatch_pool_checkouts_total{{{g}}}[{window}])") == 0
    log(f"{len(series)} counter series monotonic over {window}")

    # 5. A smaller fleet replaces it: uvicorn --workers 2, scraped next to gunicorn, then gunicorn stops.
    uvicorn = stack.start_app(
        [
            *(sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(EXAMPLE)),
            *("--workers", str(UVICORN_WORKERS), "--host", LOOPBACK, "--port", str(stack.uvicorn_port)),
            *("--log-level", "warning"),
        ],
        stack.uvicorn_port,
        {},
    )
    u = f'job="{JOB}", instance="{uvicorn.instance}", pool="orders"'
    until(
        f"uvicorn's {UVICORN_WORKERS} workers exported",
        lambda: stack.value(f"sum(poolwatch_pool_size{{{u}}})"),
        lambda v: v == UVICORN_WORKERS * POOL_SIZE,
        explain=uvicorn.log_tail,
    )
    uvicorn_workers = uvicorn.workers()
    assert len(uvicorn_workers) == UVICORN_WORKERS, uvicorn_workers
    os.kill(min(uvicorn_workers), signal.SIGKILL)
    until(
        "uvicorn replaced its killed worker, and its gauges recovered",
        lambda: (len(uvicorn.workers() - uvicorn_workers), stack.value(f"sum(poolwatch_pool_size{{{u}}})")),
        lambda v: v == (1, UVICORN_WORKERS * POOL_SIZE),
    )
    for n in range(20):
        httpx.get(f"{uvicorn.base}/orders/{n}", timeout=60).raise_for_status()
    until(
        "uvicorn's checkouts exported",
        lambda: stack.value(f"sum(poolwatch_pool_checkouts_total{{{u}}})"),
        lambda v: v is not None and v >= 20,
    )
    log("uvicorn up and exporting next to gunicorn")
    assert stack.alert_states("PoolwatchFleetCanExhaustServer", server_endpoint=stack.endpoint) != []
    stop(gunicorn.process)
    stopped_gunicorn = time.monotonic()
    small_ceiling = UVICORN_WORKERS * PER_WORKER + DAEMON_POOL
    ceiling = f'poolwatch:server_pool_ceiling:sum{{server_endpoint="{stack.endpoint}"}}'
    until(
        f"PoolwatchFleetCanExhaustServer resolved, the small fleet's ceiling ({small_ceiling}) recorded",
        lambda: (
            stack.alert_states("PoolwatchFleetCanExhaustServer", server_endpoint=stack.endpoint),
            stack.value(f"min_over_time({ceiling}[3s])"),
            stack.value(f"max_over_time({ceiling}[3s])"),
        ),
        lambda v: v == ([], small_ceiling, small_ceiling),
    )
    log(
        f"PoolwatchFleetCanExhaustServer resolved {time.monotonic() - stopped_gunicorn:.1f}s after gunicorn stopped"
    )


def recycle_and_kill(app: App) -> tuple[collections.Counter[int], collections.Counter[str], int]:
    """QUICK_REQUESTS quick requests, each on a new connection (any worker may take it), from
    QUICK_THREADS threads; halfway, one worker is killed with SIGKILL. Which worker answered how many,
    the failures, and the worker killed."""
    answers: list[int | str] = []
    lock = threading.Lock()

    def quick(n: int) -> None:
        answer: int | str
        try:
            response = httpx.get(f"{app.base}/orders/{n}", headers={"Connection": "close"}, timeout=60)
            answer = (
                int(response.json()["worker"]) if response.status_code == 200 else str(response.status_code)
            )
        except (httpx.HTTPError, ValueError) as exc:
            answer = type(exc).__name__
        with lock:
            answers.append(answer)

    with ThreadPoolExecutor(QUICK_THREADS) as executor:
        futures = [executor.submit(quick, n) for n in range(QUICK_REQUESTS)]
        until("half the quick requests answered", lambda: len(answers), lambda n: n >= QUICK_REQUESTS // 2)
        victim = min(app.workers())
        os.kill(victim, signal.SIGKILL)
        for future in futures:
            future.result()
    served = collections.Counter(a for a in answers if isinstance(a, int))
    failed = collections.Counter(a for a in answers if isinstance(a, str))
    return served, failed, victim
