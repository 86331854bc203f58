"""A real PgBouncer in front of a test PostgreSQL server, owned by the test session.

Its configuration, auth file, socket and log live in a temporary directory; it listens on a free
loopback port. Every database name is routed to the PostgreSQL server given (``* = host=...``), in
transaction pooling with a small pool, so a test can exhaust it with a few clients. On the admin
console (database ``pgbouncer``) ``stats`` is a ``stats_users`` member, read-only, the account poolwatch
is given (``console_url``); ``admin`` (``admin_users``) is for the tests' own look and changes; ``app``
is an ordinary client. PgBouncer refuses to run
as root, so as root it runs as the ``postgres`` OS user (as PostgreSQL does in ``tests.servers``).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
from mirakuru import TCPExecutor

from tests.servers import LOOPBACK, _as_server_user, _chown_to_server_user, _ServerProcess, free_port

if TYPE_CHECKING:
    from tests.servers import PostgresServer


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("no pgbouncer binary: apt-get install pgbouncer")
    return found


class PgBouncerServer(_ServerProcess):
    """A throw-away PgBouncer routing every database to ``pg`` with ``pool_size`` server connections
    per (database, user) pool. ``app_user`` / ``app_password`` must be a role on ``pg``."""

    def __init__(self, pg: PostgresServer, app_user: str, app_password: str, *, pool_size: int = 2) -> None:
        self.pg = pg
        self.basedir = Path(tempfile.mkdtemp(prefix="poolwatch-pgbouncer-"))
        self.host = LOOPBACK
        self.port = free_port()
        self.admin = "pgbadmin"
        self.admin_password = "pgb-" + secrets.token_hex(8)
        self.stats = "pgbstats"
        self.stats_password = "pgs-" + secrets.token_hex(8)
        self.app_user = app_user
        self.app_password = app_password
        self.pool_size = pool_size
        self._executor: TCPExecutor | None = None
        self._write_config()

    def _write_config(self) -> None:
        quoted = {
            self.admin: self.admin_password,
            self.stats: self.stats_password,
            self.app_user: self.app_password,
        }
        (self.basedir / "userlist.txt").write_text(
            "".join(f'"{user}" "{password}"\n' for user, password in quoted.items())
        )
        (self.basedir / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={self.pg.host} port={self.pg.port}

[pgbouncer]
listen_addr = {self.host}
listen_port = {self.port}
unix_socket_dir = {self.basedir}
auth_type = scram-sha-256
auth_file = {self.basedir / "userlist.txt"}
admin_users = {self.admin}
stats_users = {self.stats}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 100
max_db_connections = {self.pool_size * 4}
ignore_startup_parameters = extra_float_digits,options
logfile = {self.basedir / "pgbouncer.log"}
pidfile = {self.basedir / "pgbouncer.pid"}
"""
        )
        for path in (self.basedir, *self.basedir.iterdir()):
            _chown_to_server_user(path)

    def start(self) -> PgBouncerServer:
        self._executor = TCPExecutor(
            [pgbouncer_binary(), str(self.basedir / "pgbouncer.ini")],
            host=self.host,
            port=self.port,
            timeout=30,
            stop_signal=signal.SIGTERM,  # immediate shutdown; SIGINT would wait for every client
            expected_returncode=1,  # what pgbouncer exits with after SIGTERM
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            popen_kwargs={**_as_server_user(), "cwd": str(self.basedir)},
        )
        self._executor.start()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self._accepts_connections():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PgBouncer on port {self.port} not ready in {timeout}s")
            time.sleep(0.05)

    def _accepts_connections(self) -> bool:
        try:
            self.admin_connection().close()
        except psycopg2.OperationalError:
            return False
        return True

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.basedir, ignore_errors=True)

    def admin_url(self) -> str:
        return f"postgresql://{self.admin}:{self.admin_password}@{self.host}:{self.port}/pgbouncer"

    def console_url(self) -> str:
        """The admin console as a ``stats_users`` member: what a poolwatch target is given."""
        return f"postgresql://{self.stats}:{self.stats_password}@{self.host}:{self.port}/pgbouncer"

    def admin_connection(self, *, stats: bool = False) -> Any:
        """The admin console, as the admin or (``stats``) as the read-only stats user."""
        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.stats if stats else self.admin,
            password=self.stats_password if stats else self.admin_password,
            dbname="pgbouncer",
            connect_timeout=5,
        )
        connection.autocommit = True
        return connection

    def client(self, database: str = "postgres", **kwargs: Any) -> Any:
        """An application connection through the bouncer (transaction pooling)."""
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.app_user,
            password=self.app_password,
            dbname=database,
            connect_timeout=5,
            **kwargs,
        )

    def show(self, what: str) -> list[dict[str, Any]]:
        connection = self.admin_connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SHOW {what}")
                columns = [c.name for c in cursor.description]
                return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        finally:
            connection.close()
