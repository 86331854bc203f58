"""What the command line loads and how it ends: `--version` and `--help` load argparse and nothing of
the daemon, `config` no scheduler, HTTP server or database driver, and a stopped daemon exits
without the interpreter's teardown. Module sets and exit paths, not times (benchmarks/cli_startup.py
measures those). No servers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from poolwatch import cli, config
from tests.daemonkit import clean_env, get, wait_for

PACKAGE = Path(cli.__file__).parent
# Loaded by none of the light commands: the daemon's and the drivers' libraries.
HEAVY = (
    "sqlalchemy",
    "redis",
    "psycopg2",
    "apscheduler",
    "prometheus_client",
    "bcrypt",
    "wsgiref",
    "pydantic",
)
# `--version` and `--help` load no more than argparse does: not even the configuration's libraries.
CONFIGURATION = ("poolwatch.schema", "yaml", "urllib.request", "concurrent.futures")


def modules_loaded_by(argv: list[str], tmp_path: Path) -> set[str]:
    """The modules a fresh interpreter has loaded after ``poolwatch <argv>``. The package's
    ``__init__`` is not run: what it imports is measured by the library's own import test."""
    code = f"""
import sys, types
package = types.ModuleType("poolwatch")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["poolwatch"] = package
from poolwatch.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
modules = sorted(sys.modules)
import json
sys.stderr.write(json.dumps(modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        timeout=60,
        check=False,
    )
    return set(json.loads(result.stderr.splitlines()[-1]))


def loaded(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in roots or name in roots)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["run", "--help"]])
def test_version_and_help_load_nothing_of_the_daemon_or_the_configuration(
    argv: list[str], tmp_path: Path
) -> None:
    modules = modules_loaded_by(argv, tmp_path)
    assert "argparse" in modules, "the measurement ran"
    assert loaded(modules, HEAVY + CONFIGURATION) == []
    assert sorted(m for m in modules if m.startswith("poolwatch.")) == ["poolwatch._version", "poolwatch.cli"]


def test_config_loads_no_scheduler_server_or_driver(tmp_path: Path) -> None:
    path = tmp_path / "poolwatch.yaml"
    path.write_text('targets: [{name: cache, kind: redis, url: "redis://cache.example:6379/0"}]\n')
    modules = modules_loaded_by(["config", "-c", str(path)], tmp_path)
    assert "poolwatch.schema" in modules, "the measurement ran"
    assert loaded(modules, HEAVY) == []


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("postgres", "postgresql+psycopg2://app@db.example:5432/orders"),
        ("mysql", "mysql+pymysql://app@db.example:3306/orders"),
        ("pgbouncer", "postgresql://app@db.example:6432/pgbouncer"),
        ("sqlite", "sqlite:///{tmp}/app.db"),
    ],
)
def test_config_of_a_sql_target_loads_no_sqlalchemy(kind: str, url: str, tmp_path: Path) -> None:
    # A SQL URL is checked by poolwatch's own parser (tests/unit/test_sql_url.py holds it to
    # SQLAlchemy's); SQLAlchemy itself costs half a second of start-up.
    path = tmp_path / "poolwatch.yaml"
    path.write_text(f'targets: [{{name: db, kind: {kind}, url: "{url.replace("{tmp}", str(tmp_path))}"}}]\n')
    modules = modules_loaded_by(["config", "-c", str(path)], tmp_path)
    assert "poolwatch.schema" in modules, "the measurement ran"
    assert loaded(modules, HEAVY) == []


def test_check_of_a_sqlite_target_loads_no_redis(tmp_path: Path) -> None:
    path = tmp_path / "poolwatch.yaml"
    path.write_text(f'targets: [{{name: lite, kind: sqlite, url: "sqlite:///{tmp_path}/app.db"}}]\n')
    modules = modules_loaded_by(["check", "-c", str(path)], tmp_path)
    assert "sqlalchemy" in modules, "the measurement ran"
    assert loaded(modules, ("redis",)) == []


def test_the_listen_default_shown_by_help_is_the_configurations() -> None:
    assert cli.DEFAULT_LISTEN == config.DEFAULT_LISTEN


def test_a_stopped_daemon_exits_without_the_interpreters_teardown(tmp_path: Path) -> None:
    # The teardown collects every object of every library one by one after "poolwatch stopped"
    # (up to seconds on a loaded machine); an atexit hook shows whether it ran.
    code = (
        "import atexit, sys; atexit.register(lambda: sys.stderr.write('interpreter teardown\\n')); "
        "sys.argv = ['poolwatch', 'run', '--listen', '127.0.0.1:0']; "
        "from poolwatch.cli import entry; entry()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=clean_env(HOME=str(tmp_path), POOLWATCH_STATE_DIR=str(tmp_path / "state")),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "/metrics on" in line:
            break
    url = re.search(r"/metrics on (\S+)", lines[-1])
    assert url, lines
    # Up once probed: run() has installed its signal handlers by then (start() logs the banner first).
    wait_for(lambda: 'poolwatch_up{target="embedded"} 1.0' in get(url.group(1))[1], what="the target up")
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(30) == 0, "".join(lines) + rest
    assert "poolwatch stopped" in rest
    assert "interpreter teardown" not in rest


def test_run_without_otlp_keeps_the_opentelemetry_sdk_out_and_redis_working(tmp_path: Path) -> None:
    """redis-py imports the SDK whenever it is installed; ``poolwatch run`` without ``otlp:`` hides
    it before reading the configuration (a Redis URL loads redis-py)."""
    pytest.importorskip("opentelemetry.sdk.metrics")
    path = tmp_path / "poolwatch.yaml"
    # Invalid on purpose (after the Redis target): `run` returns 2 instead of running forever.
    path.write_text(
        "targets: [{name: cache, kind: redis, url: 'redis://127.0.0.1:1/0'}]\nlog: {level: LOUD}\n"
    )
    code = f"""
import sys
from poolwatch.cli import main
assert main(["run", "--config", {str(path)!r}]) == 2
import redis
from redis.observability import providers
client = redis.Redis.from_url("redis://127.0.0.1:1/0")
print(int("opentelemetry.sdk.metrics" in sys.modules), int(providers.OTEL_AVAILABLE), type(client).__name__)
from poolwatch.process import show_sdk
show_sdk()
import opentelemetry.sdk.metrics
print(int("opentelemetry.sdk.metrics" in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0", "Redis", "1"]
