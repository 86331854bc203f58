"""A real MariaDB server for the tests, owned by the test session (like ``tests.servers``).

``mariadb-install-db`` writes a data directory once per test session (it takes seconds); each server
copies that template into its own temporary directory, listens on a free loopback port and a socket
in that directory, and is started, stopped, killed and restarted by the test that owns it. As root,
mariadbd runs as the ``mysql`` OS user (``--user``). The system's own MariaDB (port 3306, its
datadir, its socket) is never used: every option is given on the command line, ``--no-defaults``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
from mirakuru import TCPExecutor

from tests.servers import LOOPBACK, _ServerProcess, free_port

_TEMPLATE_LOCK = threading.Lock()
_TEMPLATE: list[Path] = []


def _server_user() -> str | None:
    return "mysql" if os.geteuid() == 0 else None


def _chown(path: Path) -> None:
    user = _server_user()
    if user is None:
        return
    for entry in (path, *path.rglob("*")):
        shutil.chown(entry, user, user)


def mariadbd() -> str:
    found = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("no MariaDB server binary: apt-get install mariadb-server")
    return found


def _template() -> Path:
    """A freshly installed data directory, made once per test session and copied by each server."""
    with _TEMPLATE_LOCK:
        if _TEMPLATE and (_TEMPLATE[0] / "mysql").is_dir():
            return _TEMPLATE[0]
        base = Path(tempfile.mkdtemp(prefix="poolwatch-mariadb-template-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)  # ~100 MB: gone with the session
        datadir = base / "data"
        command = [
            shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        user = _server_user()
        if user is not None:
            _chown(base)
            command.append(f"--user={user}")
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stderr.strip()[-500:]}")
        _TEMPLATE[:] = [datadir]
        return datadir


class MariaDBServer(_ServerProcess):
    """A throw-away MariaDB server. ``root`` (socket, no password) administers it; ``admin`` is a
    password-protected superuser reachable over TCP, as a monitoring tool would see one."""

    def __init__(self, *, performance_schema: bool = False, max_connections: int = 151) -> None:
        self.basedir = Path(tempfile.mkdtemp(prefix="poolwatch-mariadb-"))
        self.host = LOOPBACK
        self.port = free_port()
        self.socket = self.basedir / "mysqld.sock"
        self.datadir = self.basedir / "data"
        self.performance_schema = performance_schema
        self.max_connections = max_connections
        self.superuser = "admin"
        self.password = "my-" + secrets.token_hex(12)
        self._executor: TCPExecutor | None = None
        shutil.copytree(_template(), self.datadir)
        _chown(self.basedir)
        self._provisioned = False

    def start(self) -> MariaDBServer:
        command = [
            mariadbd(),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.basedir / 'mysqld.pid'}",
            f"--log-error={self.basedir / 'error.log'}",
            "--skip-networking=0",
            "--skip-log-bin",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M",
            "--innodb-flush-log-at-trx-commit=0",
            f"--max-connections={self.max_connections}",
            f"--performance-schema={'ON' if self.performance_schema else 'OFF'}",
        ]
        user = _server_user()
        if user is not None:
            command.append(f"--user={user}")
        self._executor = TCPExecutor(
            command,
            host=self.host,
            port=self.port,
            timeout=90,
            stop_signal=signal.SIGTERM,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            popen_kwargs={"cwd": str(self.basedir)},
        )
        self._executor.start()
        self._wait_ready()
        if not self._provisioned:
            self.execute(f"CREATE USER admin@'%' IDENTIFIED BY '{self.password}'")
            self.execute("GRANT ALL PRIVILEGES ON *.* TO admin@'%' WITH GRANT OPTION")
            self._provisioned = True
        return self

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self._accepts_connections():
            if time.monotonic() > deadline:
                raise TimeoutError(f"MariaDB on port {self.port} not ready in {timeout}s")
            time.sleep(0.05)

    def _accepts_connections(self) -> bool:
        try:
            self.connect().close()
        except pymysql.err.OperationalError:
            return False
        return True

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.basedir, ignore_errors=True)

    def connect(self, user: str | None = None, password: str | None = None, **kwargs: Any) -> Any:
        """A PyMySQL connection: as root over the socket by default, else as ``user`` over TCP."""
        if user is None:
            return pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True, **kwargs)
        if password is None and user == self.superuser:
            password = self.password
        return pymysql.connect(
            host=self.host, port=self.port, user=user, password=password or "", autocommit=True, **kwargs
        )

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        database: str = "mysql",
        driver: str = "mysql+pymysql",
    ) -> str:
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.password
        auth = f"{user}:{password}" if password else user
        return f"{driver}://{auth}@{self.host}:{self.port}/{database}"

    def execute(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root and return its rows, if any."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def create_user(self, name: str, password: str, *grants: str) -> None:
        self.execute(f"CREATE USER `{name}`@'%%' IDENTIFIED BY %s", (password,))
        for grant in grants:
            self.execute(f"GRANT {grant} TO `{name}`@'%'")

    def alive(self, connection_id: int) -> bool:
        rows = self.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (connection_id,))
        return bool(rows)


class Sessions:
    """Client sessions a test opens on a MariaDB server (password ``pw``), idle or idle in a
    transaction (an InnoDB table ``t`` must exist in the database), all closed by ``close()``."""

    def __init__(self, server: MariaDBServer) -> None:
        self.server = server
        self.opened: list[Any] = []

    def open(self, user: str, database: str, state: str = "idle", **kwargs: Any) -> Any:
        connection = self.server.connect(user, "pw", database=database, **kwargs)
        self.opened.append(connection)
        if state == "idle in transaction":
            with connection.cursor() as cursor:
                cursor.execute("START TRANSACTION")
                cursor.execute("SELECT * FROM t")
        return connection

    def alive(self, connection: Any) -> bool:
        return self.server.alive(connection.thread_id())

    def close(self) -> None:
        for connection in self.opened:
            with contextlib.suppress(Exception):
                connection.close()
