"""Real PostgreSQL and Redis servers for the tests, owned by the test session.

Each server runs from the OS binaries on a free loopback port in its own temporary directory, so a
fault test can stop, kill and restart it without touching anything else on the machine. Process
management is mirakuru's (the executor pytest-postgresql and pytest-redis build on); what it does not
do, and why these fixtures exist at all, is run PostgreSQL as the ``postgres`` OS user when the tests
run as root (PostgreSQL refuses root), and initialise a cluster with password authentication so auth
failures can be tested.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import redis
from mirakuru import TCPExecutor
from psycopg2 import sql

if TYPE_CHECKING:
    from collections.abc import Mapping

LOOPBACK = "127.0.0.1"
# What every test PostgreSQL runs with: fast and disposable (nothing survives a crash), quiet, and
# room for the connection tests.
POSTGRES_SETTINGS: dict[str, object] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": 300,
    "shared_buffers": "32MB",
    "log_min_messages": "fatal",
    "logging_collector": "off",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def pg_bindir() -> Path:
    configured = os.environ.get("POOLWATCH_TEST_PG_BINDIR")
    if configured:
        return Path(configured)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        found = shutil.which("postgres")
        if found is None:
            raise RuntimeError("no PostgreSQL server binaries: apt-get install postgresql")
        return Path(found).parent
    return candidates[-1].parent


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that drop to the postgres OS user when running as root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class _ServerProcess:
    """The lifecycle both servers share: a mirakuru executor that a test may stop, kill, restart."""

    _executor: TCPExecutor | None

    @property
    def running(self) -> bool:
        return self._executor is not None and self._executor.running()

    def start(self) -> _ServerProcess:
        raise NotImplementedError

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.stop()
            self._executor = None

    def kill(self) -> None:
        """SIGKILL the server's process group: for PostgreSQL, the postmaster and every backend die
        together, so no orphan keeps the shared memory and a restart (crash recovery) works."""
        if self._executor is not None:
            self._executor.kill()
            self._executor = None

    def restart(self) -> None:
        self.stop()
        self.start()


class PostgresServer(_ServerProcess):
    """A throw-away PostgreSQL cluster: superuser ``postgres`` with a random password."""

    def __init__(
        self,
        basedir: Path | None = None,
        port: int | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        """``settings`` are server settings given with ``-c`` on top of ``POSTGRES_SETTINGS``
        (``{"max_connections": 25, "superuser_reserved_connections": 3}``)."""
        # pytest's tmp_path is private to root (0700); the postgres user needs a directory of its own.
        self.basedir = basedir or Path(tempfile.mkdtemp(prefix="poolwatch-pg-"))
        self.settings = {**POSTGRES_SETTINGS, **(settings or {})}
        self._owns_basedir = basedir is None
        self.port = port or free_port()
        self.host = LOOPBACK
        self.superuser = "postgres"
        self.password = "pg-" + secrets.token_hex(12)
        self.datadir = self.basedir / "data"
        self.sockdir = self.basedir / "sock"
        self._executor: TCPExecutor | None = None
        self._initdb()

    def _initdb(self) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        _chown_to_server_user(self.basedir)
        self.sockdir.mkdir(exist_ok=True)
        _chown_to_server_user(self.sockdir)
        pwfile = self.basedir / "pwfile"
        pwfile.write_text(self.password + "\n")
        _chown_to_server_user(pwfile)
        result = subprocess.run(
            [
                str(pg_bindir() / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                "--pwfile",
                str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=False,
            capture_output=True,
            text=True,
            **_as_server_user(),
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")

    def start(self) -> PostgresServer:
        command = [
            str(pg_bindir() / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-k",
            str(self.sockdir),
            "-c",
            f"listen_addresses={self.host}",
        ]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        self._executor = TCPExecutor(
            command,
            host=self.host,
            port=self.port,
            timeout=60,
            stop_signal=signal.SIGINT,  # "fast" shutdown: SIGTERM would wait for every client
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            popen_kwargs={**_as_server_user(), "cwd": str(self.basedir)},
        )
        self._executor.start()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        # The port opens before recovery ends ("the database system is starting up").
        deadline = time.monotonic() + timeout
        while not self._accepts_connections():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL on port {self.port} not ready in {timeout}s")
            time.sleep(0.05)

    def _accepts_connections(self) -> bool:
        try:
            psycopg2.connect(self.dsn(), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def destroy(self) -> None:
        """Stop, and remove the cluster's directory if this object made it."""
        self.stop()
        if self._owns_basedir:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str = "postgres") -> str:
        user = user or self.superuser
        password = self.password if password is None and user == self.superuser else password
        parts = [f"host={self.host}", f"port={self.port}", f"user={user}", f"dbname={dbname}"]
        if password:
            parts.append(f"password={password}")
        return " ".join(parts)

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        database: str = "postgres",
        driver: str = "postgresql+psycopg2",
    ) -> str:
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.password
        auth = f"{user}:{password}" if password else user
        return f"{driver}://{auth}@{self.host}:{self.port}/{database}"

    def execute(
        self, statement: str | sql.Composable, params: Any = None, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit) and return its rows, if any."""
        connection = psycopg2.connect(self.dsn(dbname=dbname), connect_timeout=5)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def create_role(self, name: str, password: str, *, superuser: bool = False) -> None:
        self.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s " + ("SUPERUSER" if superuser else "")).format(
                sql.Identifier(name)
            ),
            (password,),
        )

    def create_database(self, name: str, owner: str | None = None) -> None:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self.execute(statement)

    def backends(self, application_name: str | None = None) -> list[tuple[int, str, str]]:
        """(pid, application_name, state) of client backends, optionally of one application."""
        rows = self.execute(
            "SELECT pid, application_name, coalesce(state, '') FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return [r for r in rows if application_name is None or r[1] == application_name]

    def terminate(self, application_name: str) -> int:
        """pg_terminate_backend every session of one application; how many were signalled."""
        rows = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        )
        return int(rows[0][0])


class RedisServer(_ServerProcess):
    """A throw-away redis-server, optionally with a password, keeping nothing on disk."""

    def __init__(self, basedir: Path, port: int | None = None, password: str | None = None) -> None:
        self.basedir = basedir
        self.port = port or free_port()
        self.host = LOOPBACK
        self.password = password
        self._executor: TCPExecutor | None = None
        basedir.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.basedir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.basedir / "redis.log"),
        ]
        if self.password:
            command += ["--requirepass", self.password]
        self._executor = TCPExecutor(
            command,
            host=self.host,
            port=self.port,
            timeout=30,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._executor.start()
        return self

    def url(self, db: int = 0, password: str | None = None) -> str:
        password = self.password if password is None else password
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, socket_timeout=5)


class ExternalPostgres(PostgresServer):
    """An existing server named by POOLWATCH_TEST_PG_URL, for non-destructive tests only."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.host = parsed.host or LOOPBACK
        self.port = parsed.port or 5432
        self.superuser = parsed.username or "postgres"
        self.password = parsed.password or ""
        self._executor = None
        self._owns_basedir = False

    @property
    def running(self) -> bool:
        return True

    def start(self) -> PostgresServer:
        return self


class ExternalRedis(RedisServer):
    """An existing server named by POOLWATCH_TEST_REDIS_URL, for non-destructive tests only."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host = parts.hostname or LOOPBACK
        self.port = parts.port or 6379
        self.password = parts.password
        self._executor = None

    @property
    def running(self) -> bool:
        return True

    def start(self) -> RedisServer:
        return self


class SilentServer:
    """Accepts TCP connections on a loopback port and never answers: a hung database (every
    driver's connect timeout runs out during its handshake)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()
