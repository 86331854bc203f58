"""Malformed configurations and environment values, each through the real CLI (`python -m poolwatch
run`): exit status 2, exactly one line on stderr naming the problem, no traceback, nothing on stdout.

``{tmp}`` in a case is the test's temporary directory (files named below are created there first);
``{busy}`` is a loopback port another socket is listening on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

# The first test's setup runs every case (72 interpreters, four at a time): a minute on a quiet
# machine, several on a loaded one. The default per-test timeout would cut it there.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55"  # appears in some bad URLs: it must not appear in the error line


@dataclass(frozen=True)
class Case:
    id: str
    config: str | bytes | None  # file content; None: no --config
    expect: str  # a fragment of the one error line
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def _target(extra: str = "", *, url: str = "postgresql+psycopg2://app@db.example:5432/app") -> str:
    return f'targets: [{{name: orders, kind: postgres, url: "{url}"{extra}}}]\n'


def _redis(extra: str = "", url: str = "redis://cache.example:6379/0") -> str:
    return f'targets: [{{name: cache, kind: redis, url: "{url}"{extra}}}]\n'


CASES = [
    # The file itself
    Case("empty-file", "", "the configuration file is empty"),
    Case("not-yaml", "targets: [a, b\n", "not valid YAML at line"),
    Case("tab-indent", "\ttargets: []\n", "not valid YAML at line 1"),
    Case("top-level-list", "- a\n- b\n", "expected a mapping at the top level, got list"),
    Case("top-level-scalar", "hello\n", "expected a mapping at the top level, got str"),
    Case("not-utf8", b"\xff\xfe\x00targets", "not UTF-8 text"),
    Case("missing-file", None, "the configuration file does not exist", args=("-c", "{tmp}/absent.yaml")),
    Case(
        "dev-zero",
        None,
        "/dev/zero: the configuration file is not a regular file (a character device)",
        args=("-c", "/dev/zero"),
    ),
    Case("too-large", "#" * (1 << 20) + "\n", "is larger than 1 MiB, the limit for this file"),
    Case("nested-500-levels", "x: " + "[" * 500 + "]" * 500 + "\n", "nested deeper than 64 levels"),
    Case(
        "alias-bomb",
        "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else 'x'}]\n" for i in range(9)),
        "expands to more than 100000 values",
    ),
    Case("duplicate-key", _redis() + "targets: []\n", "duplicate key targets at line 2"),
    Case("directory-as-file", None, "is a directory", args=("-c", "{tmp}")),
    # Keys and types
    Case("unknown-top-key", "metrics: {port: 1}\n", "metrics: unknown key"),
    Case("unknown-pool-key", _target(", pool: {sise: 5}"), "targets[0](orders).pool.sise: unknown key"),
    Case(
        "size-is-string",
        _target(', pool: {size: "5"}'),
        "targets[0](orders).pool.size: expected a valid integer",
    ),
    Case("size-zero", _target(", pool: {size: 0}"), "pool.size: expected greater than or equal to 1"),
    Case("overflow-negative", _target(", pool: {max_overflow: -1}"), "pool.max_overflow"),
    Case(
        "timeout-negative",
        _target(", pool: {timeout: -1}"),
        "pool.timeout: expected greater than or equal to 0.1",
    ),
    Case(
        "interval-zero",
        _redis(", probe: {interval: 0}"),
        "probe.interval: expected greater than or equal to 0.1",
    ),
    Case("interval-nan", _redis(", probe: {interval: .nan}"), "probe.interval"),
    Case(
        "interval-tiny",
        _redis(", probe: {interval: 1.0e-9, timeout: 1.0e-9}"),
        "probe.interval: expected greater than or equal to 0.1 (got 1e-09) (and 1 more)",
    ),
    Case(
        "request-timeout-tiny",
        "http: {request_timeout: 1.0e-300}\n",
        "http.request_timeout: expected greater",
    ),
    Case(
        "census-timeout-over-interval",
        _target(", census: {interval: 5, timeout: 10}"),
        "census: timeout (10) must not exceed interval (5)",
    ),
    Case("interval-huge", _redis(", probe: {interval: 1.0e+12}"), "probe.interval: expected less than"),
    Case(
        "timeout-over-interval", _redis(", probe: {interval: 1, timeout: 5}"), "timeout (5) must not exceed"
    ),
    Case("bool-as-string", _target(', pool: {pre_ping: "yes"}'), "pool.pre_ping: expected a valid boolean"),
    Case(
        "min-idle-over-size", _target(", pool: {size: 2, min_idle: 5}"), "min_idle (5) must not exceed size"
    ),
    Case("thresholds-negative", _target(", census: {idle_thresholds: [-1]}"), "census.idle_thresholds"),
    Case("reaper-without-timeout", _target(", reaper: {enabled: true}"), "an enabled reaper needs"),
    Case("reaper-cap-zero", _target(", reaper: {max_per_run: 0}"), "reaper.max_per_run"),
    Case("targets-is-mapping", "targets: {orders: 1}\n", "targets: expected a valid tuple"),
    Case("target-is-string", "targets: [orders]\n", "targets[0]: expected a mapping"),
    Case(
        "name-missing",
        'targets: [{kind: redis, url: "redis://h/0"}]\n',
        "targets[0].name: required key is missing",
    ),
    Case(
        "name-with-space",
        'targets: [{name: "a b", kind: redis, url: "redis://h/0"}]\n',
        "targets[0](a b).name: expected letters, digits",
    ),
    Case(
        "name-is-number",
        'targets: [{name: 5, kind: redis, url: "redis://h/0"}]\n',
        "targets[0].name: expected a valid string",
    ),
    Case(
        "duplicate-names",
        'targets: [{name: a, kind: redis, url: "redis://h/0"}, {name: a, kind: redis, url: "redis://h/1"}]\n',
        "duplicate target name 'a'",
    ),
    Case(
        "unsupported-kind",
        _target().replace("postgres,", "oracle,"),
        "kind: expected 'postgres', 'mysql', 'pgbouncer', 'sqlite' or 'redis'",
    ),
    # URLs
    Case("url-not-a-url", _target(url="not a url"), "url must look like postgresql://"),
    Case(
        "url-scheme-mismatch",
        _redis(url="postgresql://h/0"),
        "url scheme postgresql:// does not fit kind redis",
    ),
    Case("url-no-host", _target(url="postgresql+psycopg2:///app"), "url needs a host"),
    Case(
        "url-port-out-of-range", _target(url=f"postgresql://app:{SECRET}@db:99999/app"), "invalid port 99999"
    ),
    Case("redis-url-port-text", _redis(url=f"redis://:{SECRET}@cache:abc/0"), "url has an invalid port"),
    Case("redis-url-database-text", _redis(url="redis://cache:6379/x"), "url database must be a number"),
    Case(
        "sqlite-in-memory",
        'targets: [{name: mem, kind: sqlite, url: "sqlite:///:memory:"}]\n',
        "targets[0](mem): url names an in-memory SQLite database",
    ),
    Case(
        "sqlite-missing-directory",
        'targets: [{name: lite, kind: sqlite, url: "sqlite:///{tmp}/no/such/app.db"}]\n',
        "url points into the directory '{tmp}/no/such', which does not exist",
    ),
    Case(
        "audit-spool-missing-directory",
        'audit: {spool_path: "{tmp}/typo/spool.db"}\n',
        "audit: spool_path points into the directory '{tmp}/typo', which does not exist",
    ),
    Case("audit-url-not-postgres", 'audit: {url: "redis://h/0"}\n', "audit: url scheme redis://"),
    # Passwords
    Case(
        "password-twice",
        _target(', password_file: "{tmp}/pw"', url=f"postgresql://app:{SECRET}@db/app"),
        "give the password in url or in password_file, not both",
    ),
    Case(
        "password-file-missing",
        _target(', password_file: "{tmp}/absent"'),
        "password_file {tmp}/absent does not exist",
    ),
    Case("password-file-directory", _target(', password_file: "{tmp}"'), "is a directory"),
    Case(
        "password-file-empty", _target(', password_file: "{tmp}/empty"'), "password_file {tmp}/empty is empty"
    ),
    Case(
        "password-file-device",
        _target(', password_file: "/dev/zero"'),
        "password_file /dev/zero is not a regular file (a character device)",
    ),
    Case(
        "password-file-binary",
        _target(', password_file: "{tmp}/binary"'),
        "password_file {tmp}/binary is not UTF-8 text",
    ),
    # The endpoint
    Case("http-null", "http: null\n", "http: expected a mapping"),
    Case("listen-nonsense", 'http: {listen: "nonsense"}\n', "http.listen: expected host:port"),
    Case("listen-bad-ipv6", 'http: {listen: "[zz]:80"}\n', "http.listen: 'zz' is not an IPv6 address"),
    Case(
        "listen-flag-port",
        _redis(),
        "http.listen: expected host:port with a port 0-65535",
        args=("--listen", "h:70000"),
    ),
    Case(
        "port-in-use",
        _redis(),
        "http.listen: cannot listen on 127.0.0.1:{busy}: Address already in use",
        args=("--listen", "127.0.0.1:{busy}"),
    ),
    Case(
        "tls-cert-missing",
        'http: {tls: {cert_file: "{tmp}/absent.pem", key_file: "{tmp}/pw"}}\n',
        "http.tls.cert_file",
    ),
    Case(
        "tls-cert-not-pem",
        'http: {tls: {cert_file: "{tmp}/pw", key_file: "{tmp}/pw"}}\n',
        "http.tls: cannot load",
    ),
    Case("basic-auth-plaintext", "http: {basic_auth_users: {prom: hunter2}}\n", "must be a bcrypt hash"),
    Case("request-limit-tiny", "http: {max_request_bytes: 10}\n", "http.max_request_bytes"),
    Case("log-level", "log: {level: LOUD}\n", "log.level: expected 'DEBUG'"),
    Case("log-format", "log: {format: xml}\n", "log.format: expected 'text' or 'json'"),
    # The environment
    Case("env-listen", None, "http.listen: expected host:port", env={"POOLWATCH_LISTEN": "1.2.3.4:99999"}),
    Case("env-log-level", None, "log.level", env={"POOLWATCH_LOG_LEVEL": "chatty"}),
    Case(
        "env-config-missing",
        None,
        "the configuration file does not exist",
        env={"POOLWATCH_CONFIG": "{tmp}/absent.yaml"},
    ),
    Case(
        "env-postgres-port",
        None,
        "POSTGRES_PORT: expected a port number",
        env={"POSTGRES_HOST": "db", "POSTGRES_PORT": "x"},
    ),
    Case(
        "env-database-url-kind",
        None,
        "url scheme oracle://",
        env={"DATABASE_URL": f"oracle://a:{SECRET}@h/d"},
    ),
    Case("env-redis-url-scheme", None, "url scheme http://", env={"REDIS_URL": "http://cache"}),
    Case(
        "env-database-url-in-memory",
        None,
        "targets[0](sqlite): url names an in-memory SQLite database",
        env={"DATABASE_URL": "sqlite:///:memory:"},
    ),
    Case(
        "env-seed-variables",
        None,
        "DB_HOST, DB_PASSWORD: not read by poolwatch; set DATABASE_URL, or POSTGRES_HOST",
        env={"DB_HOST": "db", "DB_PASSWORD": SECRET},
    ),
    Case(
        "env-state-dir",
        None,
        "cannot create the directory",
        env={"POOLWATCH_STATE_DIR": "/proc/poolwatch-state"},
    ),
]


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _fill(text: str, tmp: Path, busy: int) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{busy}", str(busy))


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), **env}
    environment["PYTHONPATH"] = str(ROOT)  # this tree's poolwatch, whichever one is installed
    return subprocess.run(
        [sys.executable, "-m", "poolwatch", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def _prepare(case: Case, tmp: Path, busy: int) -> tuple[list[str], dict[str, str]]:
    (tmp / "pw").write_text("not-a-pem\n")
    (tmp / "empty").write_text("")
    (tmp / "binary").write_bytes(b"\xff\xfe\xfa")
    args = ["run"]
    if case.config is not None:
        path = tmp / "poolwatch.yaml"
        if isinstance(case.config, bytes):
            path.write_bytes(case.config)
        else:
            path.write_text(_fill(case.config, tmp, busy))
        args += ["-c", str(path)]
    args += [_fill(arg, tmp, busy) for arg in case.args]
    if "--listen" not in args and "listen" not in str(case.config) and "POOLWATCH_LISTEN" not in case.env:
        args += ["--listen", "127.0.0.1:0"]  # if a case were wrongly accepted, it must not clash
    return args, {key: _fill(value, tmp, busy) for key, value in case.env.items()}


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, busy_port: int
) -> list[tuple[subprocess.CompletedProcess[str], Path]]:
    """Every case's run, four at a time (each is a fresh interpreter, ~1 s of imports), in the order
    of CASES: by position, so that two cases given one id still each get their own run."""

    def one(case: Case) -> tuple[subprocess.CompletedProcess[str], Path]:
        tmp = tmp_path_factory.mktemp(case.id)
        args, env = _prepare(case, tmp, busy_port)
        return run_cli(args, env, tmp), tmp

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, CASES))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case.id for case in CASES])
def test_bad_input_exits_2_with_one_line(
    index: int, results: list[tuple[subprocess.CompletedProcess[str], Path]], busy_port: int
) -> None:
    case = CASES[index]
    result, tmp = results[index]
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("poolwatch: error: ")
    assert _fill(case.expect, tmp, busy_port) in lines[0]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr
    assert result.stdout == ""
