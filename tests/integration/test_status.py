"""The /status document of a real daemon against real PostgreSQL and Redis: the census's oldest
idle-in-transaction session, the reaper's terminations, job statistics and trends; and
`poolwatch status` finding a daemon that serves HTTPS with basic auth from its configuration alone."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import bcrypt
import psycopg2
import pytest
import yaml

from poolwatch.history import History
from tests.daemonkit import clean_env, running_daemon, wait_for
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from poolwatch.status import TargetDoc
    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


def _target(doc: Any, name: str) -> TargetDoc:
    found: TargetDoc = next(t for t in doc["targets"] if t["name"] == name)
    return found


@pytest.fixture
def report_role(pg: PostgresServer) -> Iterator[str]:
    pg.execute("DROP ROLE IF EXISTS status_report")
    pg.create_role("status_report", "status-report-pw")
    yield pg.dsn("status_report", "status-report-pw")
    pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'status_report'")
    pg.execute("DROP ROLE IF EXISTS status_report")


def test_the_document_names_the_oldest_idle_transaction_and_the_reapers_terminations(
    pg: PostgresServer, redis_server: RedisServer, report_role: str
) -> None:
    fast = {"probe": {"interval": 0.5, "timeout": 0.5}, "census": {"interval": 0.5, "timeout": 0.5}}
    config = {
        "audit": {"url": pg.url()},
        "targets": [
            {
                "name": "orders",
                "kind": "postgres",
                "url": pg.url(),
                "reaper": {
                    "enabled": True,
                    "dry_run": False,
                    "interval": 0.5,
                    "timeout": 0.5,
                    "idle_timeout": 1,
                    "applications": ["batch-*"],
                },
                **fast,
            },
            {"name": "cache", "kind": "redis", "url": redis_server.url(), **fast},
        ],
    }
    in_transaction = psycopg2.connect(report_role, application_name="report-job")
    cursor = in_transaction.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    (lingering_pid,) = cursor.fetchone()
    victim = psycopg2.connect(report_role, application_name="batch-7")
    victim.autocommit = True
    with victim.cursor() as victim_cursor:
        victim_cursor.execute("SELECT pg_backend_pid()")
        (victim_pid,) = victim_cursor.fetchone()
    history = lambda: History(window=60, step=0.5)  # noqa: E731
    with contextlib.closing(in_transaction), running_daemon(config, history=history) as daemon:

        def terminated() -> bool:
            reaper = _target(daemon.status(), "orders")["reaper"]
            return reaper is not None and any(d["pid"] == victim_pid for d in reaper["latest"])

        wait_for(terminated, 30, "the idle batch session terminated and shown")
        wait_for(lambda: len(_target(daemon.status(), "orders")["trend"]["sessions"]) >= 3, 30, "trend")
        doc = json.loads(json.dumps(daemon.status()))  # what /status serves
    orders = _target(doc, "orders")
    reaper = orders["reaper"]
    assert reaper is not None
    decision = next(d for d in reaper["latest"] if d["pid"] == victim_pid)
    assert decision["mode"] == "enforce"
    assert decision["reason"] == "idle"
    assert decision["user"] == "status_report"
    assert decision["application"] == "batch-7"
    assert decision["idle_seconds"] >= 1
    assert "query" not in decision
    assert reaper["lease_held"] is True
    census = orders["census"]
    assert census is not None
    oldest = census["oldest_idle_in_transaction"]
    assert oldest is not None
    assert oldest["pid"] == lingering_pid
    assert oldest["user"] == "status_report"
    assert oldest["application"] == "report-job"
    assert census["by_state"]["idle in transaction"] >= 1
    assert census["max_connections"] is not None
    assert orders["up"] is True
    jobs = {job["task"]: job for job in orders["jobs"]}
    assert set(jobs) == {"probe", "census", "housekeeping", "reaper"}
    assert jobs["census"]["last_success"] is not None
    assert len(orders["trend"]["at"]) == len(orders["trend"]["used"]) >= 3
    cache = _target(doc, "cache")
    assert cache["health"] == "ok"
    assert cache["census"] is not None
    assert cache["census"]["by_state"]["connected"] >= 1
    assert cache["reaper"] is None


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "daemon.crt", tmp_path / "daemon.key"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=poolwatch",
            ),
            *("-keyout", str(key), "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _status(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poolwatch", "status", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_status_command_finds_an_https_daemon_with_basic_auth_from_its_configuration(
    tmp_path: Path,
) -> None:
    cert, key = _self_signed(tmp_path)
    password = "ops-Pa55/word"
    port = free_port()
    config = tmp_path / "poolwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "http": {
                    "listen": f"0.0.0.0:{port}",
                    "tls": {"cert_file": str(cert), "key_file": str(key)},
                    "basic_auth_users": {"ops": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()},
                },
                "targets": [
                    {"name": "embedded", "kind": "sqlite", "url": f"sqlite:///{tmp_path}/e.db"},
                    {
                        "name": "billing",
                        "kind": "postgres",
                        "url": f"postgresql://b@127.0.0.1:{free_port()}/b",
                    },
                ],
            }
        )
    )
    (tmp_path / "pw").write_text(password + "\n")
    env = clean_env()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "poolwatch", "run", "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        by_flags = ("-c", str(config), "--user", "ops", "--password-file", str(tmp_path / "pw"))

        def answered() -> bool:
            result = _status(*by_flags, "--json", env=env)
            return result.returncode in {0, 1} and '"schema_version": 1' in result.stdout

        wait_for(answered, 60, "the daemon answers /status over HTTPS", step=0.3)
        result = _status(*by_flags, env=env)
        assert result.returncode == 1, result.stderr  # billing is down: critical
        assert result.stdout.index("CRITICAL billing") < result.stdout.index("embedded")
        assert f"https://127.0.0.1:{port}" in result.stdout
        watch = subprocess.Popen(
            [sys.executable, "-m", "poolwatch", "status", *by_flags, "--watch", "0.2"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        headers = 0
        while headers < 3:  # three refreshes, then Ctrl-C ends the watch normally
            line = watch.stdout.readline()
            assert line, "the watch ended by itself"
            headers += line.startswith("poolwatch ")
        watch.send_signal(signal.SIGINT)
        assert watch.wait(30) == 0
        watch.stdout.close()
        by_env = {**env, "POOLWATCH_CONFIG": str(config), "POOLWATCH_HTTP_USER": "ops"}
        result = _status(env={**by_env, "POOLWATCH_HTTP_PASSWORD": password})
        assert result.returncode == 1, result.stderr
        assert "billing" in result.stdout
        outputs = []
        for args, extra, expected in (
            ((), {}, "asks for credentials"),
            (("--user", "ops"), {"POOLWATCH_HTTP_PASSWORD": "wrong-Secret"}, "refused the credentials"),
            ((), {"POOLWATCH_LISTEN": f"127.0.0.1:{free_port()}"}, "cannot reach the daemon at https://"),
            (
                ("--url", f"https://ops:{quote(password, safe='')}@127.0.0.1:{port}"),
                {},
                "certificate not trusted",  # an explicit URL does not trust the configuration's certificate
            ),
            (
                ("--url", f"http://ops:{quote(password, safe='')}@127.0.0.1:{port}"),
                {},
                "cannot reach the daemon at http://",
            ),
        ):
            result = _status(*args, env={**env, "POOLWATCH_CONFIG": str(config), **extra})
            assert result.returncode == 1, (args, result.stdout)
            assert result.stderr.startswith("poolwatch: error: "), result.stderr
            assert expected in result.stderr, result.stderr
            assert result.stderr.count("\n") == 1, result.stderr
            outputs += [result.stdout, result.stderr]
        result = _status("--url", f"https://ops:{password}@127.0.0.1:{port}", env=env)  # '/' unquoted
        assert result.returncode == 2
        assert result.stderr == "poolwatch: error: --url: not a valid URL (expected http://host:port)\n"
        url = f"https://ops:{quote(password, safe='')}@127.0.0.1:{port}"
        result = _status("--url", url, "--ca-file", str(cert), "--json", env=env)
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["counts"]["critical"] == 1
        outputs += [result.stdout, result.stderr]
        assert not any(
            secret in text
            for text in outputs
            for secret in (password, quote(password, safe=""), "wrong-Secret")
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
