"""No password is ever shown: `poolwatch run` (a subprocess, logging at DEBUG) with passwords in URLs,
in password files and in the environment, on targets that work and targets that fail (wrong
password, refused, unresolvable host); every answer of the endpoint (the status page and /status with
census, reaper candidates and an idle transaction to show), every log line, every error, and the
output of `poolwatch config`, `check` and `status` (text and JSON, with basic-auth credentials given
every way it takes them) is searched for each password, plain and URL-quoted."""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import bcrypt
import psycopg2
import pytest
import yaml

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

PATHS = ("/metrics", "/healthz", "/readyz", "/status", "/", "/nope")


def _password(tag: str) -> str:
    # Characters that need URL quoting, so both forms are searched for and both must be absent.
    return f"{tag}-{secrets.token_hex(6)}/:@%?#&"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poolwatch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode()) + str(exc)


def _run_daemon_and_collect(args: list[str], env: dict[str, str], port: int, failing: list[str]) -> list[str]:
    """Start `poolwatch run`, wait until every failing target has reported its error, read every
    page a few times, stop it with SIGTERM; return every text it produced."""
    process = subprocess.Popen(
        [sys.executable, "-m", "poolwatch", "run", *args, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    texts: list[str] = []
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = yaml.safe_load(_fetch(f"{base}/status"))
                errors = {t["name"]: t["error"] for t in status["targets"]}
                if all(errors.get(name) for name in failing) and all(
                    t["up"] for t in status["targets"] if t["name"] not in failing
                ):
                    break
            except (OSError, TypeError, KeyError, yaml.YAMLError):
                pass
            assert time.monotonic() < deadline, "targets did not report in time"
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.2)
        for _ in range(3):
            texts += [_fetch(base + path) for path in PATHS]
            time.sleep(0.3)
        for extra in ((), ("--json",)):
            status_cli = _cli("status", "--url", base, *extra, env=env)
            texts += [status_cli.stdout, status_cli.stderr]
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "configuration from" in stderr, "the log was captured (so the search means something)"
    if failing:
        assert "probe of" in stderr, "the failing targets were logged"
    return [*texts, stdout, stderr]


def _assert_absent(texts: list[str], passwords: list[str]) -> None:
    blob = "\n".join(texts)
    assert len(blob) > 1000, "nothing was collected: the search would prove nothing"
    for password in passwords:
        for form in {password, quote(password, safe=""), quote(password)}:
            assert form not in blob, f"a password was found ({len(form)} chars)"


def test_no_password_in_any_output_with_a_configuration_file(
    pg: PostgresServer, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    in_url, in_file, wrong, redis_pw, unreachable, nodns = (
        _password(tag) for tag in ("url", "file", "wrong", "redis", "refused", "dns")
    )
    pg.create_role("secret_url", in_url)
    pg.create_role("secret_file", in_file)
    redis = redis_factory(password=redis_pw)
    (tmp_path / "pw").write_text(in_file + "\n")
    dead_port = _free_port()

    def pg_url(user: str, password: str, where: str = f"{pg.host}:{pg.port}") -> str:
        return f"postgresql://{user}:{quote(password, safe='')}@{where}/postgres"

    def redis_url(password: str, where: str = f"{redis.host}:{redis.port}") -> str:
        return f"redis://:{quote(password, safe='')}@{where}/0"

    config: dict[str, Any] = {
        "log": {"level": "DEBUG"},
        "targets": [
            {"name": "in_url", "kind": "postgres", "url": pg_url("secret_url", in_url)},
            {
                "name": "in_file",
                "kind": "postgres",
                "url": f"postgresql://secret_file@{pg.host}:{pg.port}/postgres",
                "password_file": str(tmp_path / "pw"),
            },
            {"name": "redis", "kind": "redis", "url": redis_url(redis_pw)},
            {"name": "wrong", "kind": "postgres", "url": pg_url("secret_url", wrong)},
            {"name": "wrong_redis", "kind": "redis", "url": redis_url(wrong)},
            {
                "name": "refused",
                "kind": "postgres",
                "url": pg_url("u", unreachable, f"127.0.0.1:{dead_port}"),
            },
            {"name": "nodns", "kind": "redis", "url": redis_url(nodns, "poolwatch-secret.invalid:6379")},
        ],
    }
    for target in config["targets"]:
        target["probe"] = {"interval": 0.5, "timeout": 0.5}
        target["census"] = {"interval": 1, "timeout": 1}
    # The status page shows who the reaper would terminate and who idles in a transaction.
    config["targets"][0]["reaper"] = {
        "enabled": True,
        "interval": 1,
        "timeout": 1,
        "idle_timeout": 1,
        "applications": ["*"],
    }
    lingering = psycopg2.connect(pg.dsn("secret_file", in_file), application_name="secret-holder")
    lingering.cursor().execute("SELECT 1")  # idle in transaction from here on
    path = tmp_path / "poolwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    passwords = [in_url, in_file, wrong, redis_pw, unreachable, nodns]

    try:
        texts = _run_daemon_and_collect(
            ["-c", str(path)], env, _free_port(), failing=["wrong", "wrong_redis", "refused", "nodns"]
        )
    finally:
        lingering.close()
    assert "secret-holder" in "".join(texts), "the status shows the idle transaction's application"
    # Pool and census series name their server by host, port and database: never a user or password.
    servers = {label for text in texts for label in re.findall(r'server="([^"]*)"', text)}
    assert f"{pg.host}:{pg.port}/postgres" in servers
    assert f"{redis.host}:{redis.port}/0" in servers
    credentials = ("secret_url", "secret_file", *passwords)
    assert not [label for label in servers if "@" in label or any(c in label for c in credentials)], servers
    for command in (
        ["config", "-c", str(path)],
        ["check", "-c", str(path)],
        ["check", "--json", "-c", str(path)],
    ):
        result = _cli(*command, env=env)
        texts += [result.stdout, result.stderr]
    assert "***" in texts[-6], "config shows where a password is set"
    _assert_absent(texts, passwords)


def test_no_password_in_any_output_with_the_environment(
    pg: PostgresServer, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    pg_pw, redis_pw = _password("env-pg"), _password("env-redis")
    pg.create_role("secret_env", pg_pw)
    redis = redis_factory(password=redis_pw)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "POOLWATCH_LOG_LEVEL": "DEBUG",
        "POSTGRES_USER": "secret_env",
        "POSTGRES_PASSWORD": pg_pw,
        "POSTGRES_HOST": pg.host,
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_DB": "postgres",
        "REDIS_URL": f"redis://:{quote(redis_pw, safe='')}@{redis.host}:{redis.port}/0",
    }
    texts = _run_daemon_and_collect([], env, _free_port(), failing=[])
    # And failing: the same passwords against servers that reject them or are not there.
    wrong_env = {
        **env,
        "POSTGRES_USER": "nobody_here",
        "REDIS_URL": env["REDIS_URL"].replace(f"{redis.host}:{redis.port}", f"127.0.0.1:{_free_port()}"),
    }
    texts += _run_daemon_and_collect([], wrong_env, _free_port(), failing=["postgres", "redis"])
    for command in (["config"], ["check"]):
        for environment in (env, wrong_env):
            result = _cli(*command, env=environment)
            texts += [result.stdout, result.stderr]
    _assert_absent(texts, [pg_pw, redis_pw])


def test_short_and_common_word_passwords_are_masked_where_they_stand_and_words_survive(
    pg: PostgresServer, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    # "postgres", "a" and "redis" are also a target name, a kind, a letter of every word: masking
    # them everywhere garbled every line and announced the password. They must be masked where a
    # password stands (URLs, password= values, `poolwatch config`) and nowhere else.
    pg.create_role("weak_word", "postgres")
    pg.create_role("weak_letter", "a")
    redis = redis_factory(password="redis")
    config: dict[str, Any] = {
        "log": {"level": "DEBUG"},
        "targets": [
            {
                "name": "postgres",
                "kind": "postgres",
                "url": f"postgresql://weak_word:postgres@{pg.host}:{pg.port}/postgres",
            },
            {
                "name": "orders",
                "kind": "postgres",
                "url": f"postgresql://weak_letter:a@{pg.host}:{pg.port}/postgres",
            },
            {"name": "cache", "kind": "redis", "url": f"redis://:redis@{redis.host}:{redis.port}/0"},
            {"name": "wrong", "kind": "redis", "url": f"redis://:a@{redis.host}:{redis.port}/0"},
        ],
    }
    for target in config["targets"]:
        target["probe"] = {"interval": 0.5}
    path = tmp_path / "poolwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    texts = _run_daemon_and_collect(["-c", str(path)], env, _free_port(), failing=["wrong"])
    shown = _cli("config", "-c", str(path), env=env)
    checked = _cli("check", "-c", str(path), env=env)
    texts += [shown.stdout, shown.stderr, checked.stdout, checked.stderr]
    blob = "\n".join(texts)

    # Ordinary words survive: the banner names the targets and kinds as configured.
    assert "targets postgres (postgres), orders (postgres), cache (redis), wrong (redis)" in blob
    assert "***" not in blob.replace("://weak_word:***@", "").replace("://weak_letter:***@", "").replace(
        "://:***@", ""
    ).replace("password: '***'", ""), "*** only where a password stands"
    # No password where one stands: every URL's password and every password value is masked.
    for password in re.findall(r"://[^\s/@:'\"]*:([^\s'\"@]*)@", blob):
        assert password == "***"
    for value in re.findall(r"(?i)\bpassword['\"]?\s*[:=]\s*['\"]?([^\s,;'\"&)}]*)", blob):
        assert value in {"***", "null"}, value
    assert shown.stdout.count("password: '***'") == 4


def test_no_password_in_the_status_command_or_pages_with_basic_auth(
    pg: PostgresServer, tmp_path: Path
) -> None:
    target_pw, http_pw, wrong = _password("target"), _password("http"), _password("wrong-http")
    pg.create_role("secret_status", target_pw)
    port = _free_port()
    hashed = bcrypt.hashpw(http_pw.encode(), bcrypt.gensalt(rounds=4)).decode()
    config = {
        "http": {"listen": f"127.0.0.1:{port}", "basic_auth_users": {"ops": hashed}},
        "targets": [
            {
                "name": "orders",
                "kind": "postgres",
                "url": f"postgresql://secret_status:{quote(target_pw, safe='')}@{pg.host}:{pg.port}/postgres",
                "probe": {"interval": 0.5, "timeout": 0.5},
            }
        ],
    }
    path = tmp_path / "poolwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "http-pw").write_text(http_pw + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "poolwatch", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    texts: list[str] = []
    try:
        flags = ("-c", str(path), "--user", "ops", "--password-file", str(tmp_path / "http-pw"))
        deadline = time.monotonic() + 30
        while '"up": true' not in (result := _cli("status", *flags, "--json", env=env)).stdout:
            assert time.monotonic() < deadline, result.stderr
            assert process.poll() is None
        base = f"http://127.0.0.1:{port}"
        for path_ in ("/", "/status"):
            request = urllib.request.Request(base + path_, headers=_basic("ops", http_pw))
            with urllib.request.urlopen(request, timeout=10) as response:
                texts.append(response.read().decode())
        by_env = {**env, "POOLWATCH_CONFIG": str(path), "POOLWATCH_HTTP_USER": "ops"}
        for args, environment in (
            (flags, env),
            ((*flags, "--json"), env),
            ((), {**by_env, "POOLWATCH_HTTP_PASSWORD": http_pw}),
            ((), {**by_env, "POOLWATCH_HTTP_PASSWORD": wrong}),
            (("--url", f"http://ops:{quote(wrong, safe='')}@127.0.0.1:{port}"), env),
            (("--url", f"http://ops:{quote(http_pw, safe='')}@127.0.0.1:{_free_port()}"), env),
            (("--url", f"http://ops:{http_pw}@127.0.0.1:{port}"), env),  # unquoted: not a URL
        ):
            result = _cli("status", *args, env=environment)
            texts += [result.stdout, result.stderr]
        assert "refused the credentials" in "".join(texts)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    texts += [stdout, stderr]
    assert "orders" in texts[0]
    _assert_absent(texts, [target_pw, http_pw, wrong])


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_no_otlp_header_in_any_output(pg: PostgresServer, tmp_path: Path) -> None:
    token, key = _password("otlp-token"), _password("otlp-key")
    (tmp_path / "headers").write_text(f"Authorization: Bearer {token}\nX-Api-Key: {key}\n")
    config = {
        "log": {"level": "DEBUG"},
        # Nothing listens there: every push fails, and the failures are logged.
        "otlp": {
            "endpoint": f"http://127.0.0.1:{_free_port()}",
            "interval": 1,
            "timeout": 1,
            "headers_file": str(tmp_path / "headers"),
        },
        "targets": [
            {
                "name": "orders",
                "kind": "postgres",
                "url": pg.url(),
                "probe": {"interval": 0.5, "timeout": 0.5},
            }
        ],
    }
    path = tmp_path / "poolwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    texts = _run_daemon_and_collect(["-c", str(path)], env, _free_port(), failing=[])
    shown = _cli("config", "-c", str(path), env=env)
    assert "X-Api-Key" in shown.stdout, "config names the headers (so the search means something)"
    texts += [shown.stdout, shown.stderr]
    # A malformed file: the error names the line, never its text.
    (tmp_path / "headers").write_text(f"Authorization Bearer {token}\n")
    for command in (["config", "-c", str(path)], ["check", "-c", str(path)]):
        result = _cli(*command, env=env)
        assert result.returncode != 0
        assert "line 1: expected 'Name: value'" in result.stderr, result.stderr
        texts += [result.stdout, result.stderr]
    _assert_absent(texts, [token, key])
