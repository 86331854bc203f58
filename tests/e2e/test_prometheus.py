"""End to end: a real Prometheus scrapes a real ``poolwatch run`` and an application embedding
poolwatch; a workload exhausts the application's pool; through Prometheus' HTTP API the
pool-exhausted alert fires, then resolves once the load stops, and every dashboard query returns data.

Prometheus runs from the Debian package's binary on a free loopback port with a 1 s scrape and
evaluation interval, and a copy of the rules on a compressed clock: every range window and every
``for`` is scaled from minutes to 2 s per minute (``[5m]`` -> ``[10s]``, ``for: 1m`` -> ``2s``), so the
rules' logic is the shipped one, only faster.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.ops import dashboard as dash
from tests.ops.tools import ROOT, RULES, tool
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.servers import PostgresServer

SECONDS_PER_MINUTE = 2
RATE_INTERVAL = "10s"
WORKLOAD_ROLE = "e2e_app"
WORKLOAD_PASSWORD = "e2e-app-password"


def compress(rules_text: str) -> str:
    """The rules with every minute turned into SECONDS_PER_MINUTE seconds."""
    data = yaml.safe_load(rules_text)

    def seconds(minutes: str) -> str:
        return f"{int(minutes) * SECONDS_PER_MINUTE}s"

    for group in data["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\d+)m\]", lambda m: f"[{seconds(m[1])}]", rule["expr"])
            if "for" in rule:
                minutes = re.fullmatch(r"(\d+)m", rule["for"])
                assert minutes, f"{rule.get('alert')}: for {rule['for']!r} is not in minutes"
                rule["for"] = seconds(minutes[1])
    return yaml.safe_dump(data, sort_keys=False)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


class Prometheus:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = get_json(url)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def label_values(self, label: str, selector: str) -> list[str]:
        """What Grafana's ``label_values(selector, label)`` asks Prometheus for."""
        url = f"{self.base_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
        body = get_json(url)
        assert body["status"] == "success", body
        return list(body["data"])

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        found = get_json(f"{self.base_url}/api/v1/alerts")["data"]["alerts"]
        return [
            a for a in found if a["labels"]["alertname"] == name and labels.items() <= a["labels"].items()
        ]


def start(command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(command, text=True, cwd=ROOT, **kwargs)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def stack(pg: PostgresServer, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """poolwatch run (watching pg), the workload application, and Prometheus scraping both."""
    pg.execute(f"DROP ROLE IF EXISTS {WORKLOAD_ROLE}")
    pg.create_role(WORKLOAD_ROLE, WORKLOAD_PASSWORD)
    processes: list[subprocess.Popen[str]] = []
    try:
        daemon_port = free_port()
        config = {
            "http": {"listen": f"127.0.0.1:{daemon_port}"},
            "log": {"level": "WARNING"},
            "targets": [
                {
                    "name": "pg",
                    "kind": "postgres",
                    "url": pg.url(),
                    "pool": {"size": 2, "max_overflow": 0, "timeout": 2},
                    "probe": {"interval": 1, "timeout": 1},
                    "census": {"interval": 1, "timeout": 1},
                    "reaper": {
                        "enabled": True,
                        "dry_run": True,
                        "interval": 1,
                        "timeout": 1,
                        "idle_in_transaction_timeout": 2,
                        "users": [WORKLOAD_ROLE],
                    },
                }
            ],
        }
        (tmp_path / "poolwatch.yaml").write_text(yaml.safe_dump(config))
        daemon = start(
            [sys.executable, "-m", "poolwatch", "run", "--config", str(tmp_path / "poolwatch.yaml")]
        )
        processes.append(daemon)
        daemon_url = f"http://127.0.0.1:{daemon_port}"
        wait_for("poolwatch /readyz", lambda: get_json_status(daemon_url + "/readyz") == 200, 60)

        app_port = free_port()
        app = start(
            [
                sys.executable,
                "-m",
                "tests.e2e.workload",
                pg.url(WORKLOAD_ROLE, WORKLOAD_PASSWORD),
                str(app_port),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        processes.append(app)
        assert app.stdout is not None
        assert app.stdout.readline().strip() == "ready"

        (tmp_path / "rules.yml").write_text(compress(RULES.read_text(encoding="utf-8")))
        prometheus_port = free_port()
        prometheus_config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [
                {"job_name": "poolwatch", "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"]}]},
                {"job_name": "e2e-app", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]},
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
        prometheus = start(
            [
                tool("prometheus", "the Debian prometheus package"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(prometheus)
        api = Prometheus(f"http://127.0.0.1:{prometheus_port}")
        wait_for("Prometheus ready", lambda: get_json_status(api.base_url + "/-/ready") == 200, 60)
        for job in ("poolwatch", "e2e-app"):
            wait_for(f"{job} scraped", functools.partial(api.query, f'up{{job="{job}"}} == 1'), 30)
        yield {"prometheus": api, "app": app}
    finally:
        for process in reversed(processes):
            if process.stdin:
                process.stdin.close()
            stop(process)
        pg.execute(f"DROP ROLE IF EXISTS {WORKLOAD_ROLE}")


def get_json_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def send(app: subprocess.Popen[str], command: str) -> None:
    assert app.stdin is not None
    app.stdin.write(command + "\n")
    app.stdin.flush()


@pytest.mark.integration
def test_exhaustion_alert_fires_and_resolves_and_every_dashboard_query_has_data(stack):
    api: Prometheus = stack["prometheus"]
    app: subprocess.Popen[str] = stack["app"]
    assert api.alerts("PoolwatchPoolExhausted", pool="e2e") == []

    send(app, "load")
    loaded_at = time.monotonic()
    firing = wait_for(
        "PoolwatchPoolExhausted firing for pool e2e",
        lambda: [a for a in api.alerts("PoolwatchPoolExhausted", pool="e2e") if a["state"] == "firing"],
        90,
    )
    print(f"PoolwatchPoolExhausted firing {time.monotonic() - loaded_at:.1f}s after the load started")
    assert firing[0]["labels"]["job"] == "e2e-app"
    assert firing[0]["labels"]["severity"] == "critical"
    assert api.query('sum(poolwatch_pool_timeouts_total{job="e2e-app", pool="e2e"}) > 0')

    # Every dashboard query, as Grafana sends it with every variable at "All", returns data (but the
    # MySQL and PgBouncer rows: this stack watches neither, so their queries match no target).
    queries = dash.queries(dash.load(), without=dash.KIND_VARIABLES)
    remaining = {where: dash.instantiate(expr, RATE_INTERVAL) for where, expr in queries}
    deadline = time.monotonic() + 45
    while remaining and time.monotonic() < deadline:
        remaining = {where: query for where, query in remaining.items() if not api.query(query)}
        time.sleep(1)
    assert remaining == {}, f"dashboard queries that returned no data: {sorted(remaining)}"

    # The template variables list what this stack runs: both jobs, the app's pool, the target.
    expected = {
        "job": {"poolwatch", "e2e-app"},
        "pool": {"e2e"},
        "target": {"pg"},
        "instance": set(),
        "server": set(),
    }
    for name, variable in dash.variables(dash.load()).items():
        if name == "datasource" or name in dash.KIND_VARIABLES:
            continue
        selector, label = dash.variable_selector(variable)
        values = api.label_values(label, dash.instantiate(selector, RATE_INTERVAL))
        assert values, f"variable {name} has no values"
        assert expected[name] <= set(values), name

    send(app, "stop")
    assert app.stdout is not None
    summary = app.stdout.readline()
    stopped_at = time.monotonic()
    assert re.fullmatch(r"stopped ok=[1-9]\d* timeout=[1-9]\d*\n", summary), summary
    wait_for(
        "PoolwatchPoolExhausted resolved for pool e2e",
        lambda: api.alerts("PoolwatchPoolExhausted", pool="e2e") == [],
        90,
    )
    print(
        f"PoolwatchPoolExhausted resolved {time.monotonic() - stopped_at:.1f}s after the load stopped; {summary}"
    )
    # The daemon itself was scraped and its target up all along.
    assert api.alerts("PoolwatchNotScraped") == []
    assert api.alerts("PoolwatchTargetDown") == []


def test_compressed_rules_keep_the_shipped_logic(tmp_path):
    # The e2e copy differs only in its time scale, and promtool accepts it.
    compressed = yaml.safe_load(compress(RULES.read_text(encoding="utf-8")))
    shipped = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for fast_group, group in zip(compressed["groups"], shipped["groups"], strict=True):
        for fast, rule in zip(fast_group["rules"], group["rules"], strict=True):
            # Recording rules (the fleet headroom group) have neither labels nor annotations.
            assert fast.get("alert") == rule.get("alert")
            assert fast.get("record") == rule.get("record")
            assert fast.get("labels") == rule.get("labels")
            assert fast.get("annotations") == rule.get("annotations")
            assert re.sub(r"\[\d+s\]", "[W]", fast["expr"]) == re.sub(r"\[\d+m\]", "[W]", rule["expr"])
    (exhausted,) = [
        r for g in compressed["groups"] for r in g["rules"] if r.get("alert") == "PoolwatchPoolExhausted"
    ]
    assert "[10s]" in exhausted["expr"]
    assert exhausted["for"] == "2s"
    (tmp_path / "rules.yml").write_text(compress(RULES.read_text(encoding="utf-8")))
    result = subprocess.run(
        [tool("promtool", "the Debian prometheus package"), "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
