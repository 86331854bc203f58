"""The MySQL reaper against a real MariaDB: what it kills, what survives, its re-check, lease and grants.

Audit records go to the session's PostgreSQL, as they would in production.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from poolwatch.census.mysql import read
from poolwatch.config import validate
from poolwatch.daemon import Daemon
from poolwatch.metrics import Metrics
from poolwatch.reaper.audit import AuditLog
from poolwatch.reaper.mysql import build_mysql_reaper, session_of, superusers
from poolwatch.reaper.own import OwnBackends
from poolwatch.reaper.policy import Victim
from tests.daemonkit import wait_for
from tests.mariadb import Sessions

pytestmark = pytest.mark.integration

SQL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sql"


def statements(sql: str) -> list[str]:
    """The statements of a grants file, comments left out."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def create_from_grants_file(mariadb, name: str) -> None:
    """The account deploy/sql/mariadb-grants.sql makes, run as it is but for the account name."""
    sql = (SQL_DIR / "mariadb-grants.sql").read_text().replace("'poolwatch'@'%'", f"'{name}'@'%'")
    for statement in statements(sql):
        mariadb.execute(statement)
    mariadb.execute(f"ALTER USER '{name}'@'%' IDENTIFIED BY 'pw'")


@pytest.fixture(scope="module")
def world(mariadb, pg):
    tag = uuid.uuid4().hex[:6]
    names = {
        "web": f"web_{tag}",
        "other": f"other_{tag}",
        "root": f"root_{tag}",
        "orders": f"orders_{tag}",
        "billing": f"billing_{tag}",
        "watch": f"watch_{tag}",
        "audit": f"audit_{tag}",
    }
    for database in ("orders", "billing"):
        mariadb.execute(f"CREATE DATABASE {names[database]}")
        mariadb.execute(f"CREATE TABLE {names[database]}.t (id int PRIMARY KEY) ENGINE=InnoDB")
    for user in ("web", "other"):
        mariadb.create_user(names[user], "pw", f"ALL ON {names['orders']}.*", f"ALL ON {names['billing']}.*")
    mariadb.create_user(names["root"], "pw", "ALL PRIVILEGES ON *.*")  # SUPER among them
    create_from_grants_file(mariadb, names["watch"])
    pg.create_database(names["audit"])
    return names


@pytest.fixture
def sessions(mariadb):
    opened = Sessions(mariadb)
    yield opened
    opened.close()


def target(mariadb, world, *, watch=None, **reaper):
    return {
        "name": "my",
        "kind": "mysql",
        "url": mariadb.url(user=watch or world["watch"], password="pw", database=""),
        "probe": {"interval": 5, "timeout": 2},
        "census": {"interval": 5, "timeout": 2},
        "reaper": {
            "enabled": True,
            "dry_run": False,
            "interval": 0.5,
            "timeout": 0.5,
            "idle_timeout": 1,
            "databases": [world["orders"]],
            "users": [world["web"]],
            **reaper,
        },
    }


def settings_for(mariadb, pg, world, **kwargs):
    return validate(
        {
            "http": {"listen": "127.0.0.1:0"},
            "targets": [target(mariadb, world, **kwargs)],
            "audit": {"url": pg.url(database=world["audit"])},
        }
    )


def reaper_for(mariadb, pg, world, **kwargs):
    settings = settings_for(mariadb, pg, world, **kwargs)
    metrics = Metrics(CollectorRegistry())
    audit = AuditLog(settings.audit, metrics.reaper)
    job = build_mysql_reaper(settings.targets[0], audit, metrics.reaper, OwnBackends())
    return job, audit, metrics


def audit_rows(pg, world, ids):
    if not pg.execute("SELECT to_regclass('poolwatch_audit')", dbname=world["audit"])[0][0]:
        return []
    return pg.execute(
        "SELECT pid, reason, mode, kind, username, database FROM poolwatch_audit "
        "WHERE pid = ANY(%s) AND target = 'my' ORDER BY id",
        (list(ids),),
        dbname=world["audit"],
    )


def idle_for(seconds: float = 1.1) -> None:
    """Let the sessions opened so far pass an idle timeout (the server counts whole seconds)."""
    time.sleep(seconds)


def test_daemon_kills_idle_sessions_in_policy_while_protected_sessions_live(mariadb, pg, world, sessions):
    web, orders = world["web"], world["orders"]
    victim = sessions.open(web, orders)
    survivors = {
        "other user": sessions.open(world["other"], orders),
        "other database": sessions.open(web, world["billing"]),
        "superuser": sessions.open(world["root"], orders),
        "poolwatch's own user": mariadb.connect(world["watch"], "pw"),
        "in a transaction (only idle_timeout is set)": sessions.open(web, orders, "idle in transaction"),
    }
    sessions.opened.append(survivors["poolwatch's own user"])
    active = sessions.open(web, orders)
    stop_active = threading.Event()

    def keep_active() -> None:  # busy until the checks are done: never idle past the timeout
        with active.cursor() as cursor:
            while not stop_active.is_set():
                cursor.execute("SELECT SLEEP(0.2)")

    worker = threading.Thread(target=keep_active, daemon=True)
    worker.start()
    # The superuser is inside the scope: only the superuser rule keeps its session alive.
    settings = settings_for(mariadb, pg, world, users=[web, world["root"], world["watch"]])
    daemon = Daemon(settings, metrics=Metrics(CollectorRegistry()))
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: not sessions.alive(victim), timeout=15, what="the victim killed")
        idle_for(1.5)  # more runs: still nothing else
        for why, connection in survivors.items():
            assert sessions.alive(connection), why
        assert sessions.alive(active)
        wait_for(lambda: audit_rows(pg, world, [victim.thread_id()]) != [], what="the audit row")
        rows = audit_rows(pg, world, [victim.thread_id(), *(c.thread_id() for c in survivors.values())])
        assert rows == [(victim.thread_id(), "idle", "enforce", "mysql", web, orders)]
        registry = daemon.metrics.registry
        labels = {"target": "my", "reason": "idle", "mode": "enforce"}
        assert registry.get_sample_value("poolwatch_reaper_terminated_total", labels) == 1
        assert registry.get_sample_value("poolwatch_reaper_leader", {"target": "my"}) == 1
    finally:
        stop_active.set()
        worker.join(5)
        daemon.stop()
        runner.join(10)


def test_idle_in_transaction_has_its_own_timeout_and_dry_run_kills_nothing(mariadb, pg, world, sessions):
    idle = sessions.open(world["web"], world["orders"])
    open_transaction = sessions.open(world["web"], world["orders"], "idle in transaction")
    job, audit, _metrics = reaper_for(
        mariadb, pg, world, dry_run=True, idle_timeout=3600, idle_in_transaction_timeout=1
    )
    try:
        idle_for()
        job.run()
        job.run()  # the same candidate again: recorded once while it stays one
        assert sessions.alive(open_transaction)
        rows = audit_rows(pg, world, [open_transaction.thread_id(), idle.thread_id()])
        assert rows == [
            (
                open_transaction.thread_id(),
                "idle_in_transaction",
                "dry_run",
                "mysql",
                world["web"],
                world["orders"],
            )
        ]
        job.reaper.dry_run = False
        job.run()
        assert not sessions.alive(open_transaction)
        assert sessions.alive(idle)
    finally:
        job.close()
        audit.close()


def test_max_per_run_holds(mariadb, pg, world, sessions):
    opened = [sessions.open(world["web"], world["orders"]) for _ in range(4)]
    job, audit, _ = reaper_for(mariadb, pg, world, max_per_run=3)
    try:
        idle_for()
        job.run()
        assert sum(not sessions.alive(c) for c in opened) == 3
    finally:
        job.close()
        audit.close()


def test_the_kill_rechecks_identity_state_and_lease(mariadb, pg, world, sessions):
    victim = sessions.open(world["web"], world["orders"])
    # A longer timeout than elsewhere: "ran a statement just now" must stay under it on a busy machine.
    job, audit, _ = reaper_for(mariadb, pg, world, idle_timeout=3)
    reaper = job.reaper
    try:
        idle_for(3.1)
        connection = reaper.lease.hold()
        assert connection is not None
        snapshot = read(connection)
        (thread,) = [t for t in snapshot.threads if t.id == victim.thread_id()]
        decided = Victim(session_of(thread, snapshot.now, superusers(connection)), "idle", 1.0)
        assert reaper.still_a_victim(connection, decided, frozenset())
        # The same id with another client address: another connection, never killed.
        assert decided.session.client_addr is not None
        host, _, port = decided.session.client_addr.rpartition(":")
        moved = replace(decided, session=replace(decided.session, client_addr=f"{host}:{int(port) + 1}"))
        assert not reaper.still_a_victim(connection, moved, frozenset())
        # One of ours: never.
        assert not reaper.still_a_victim(connection, decided, frozenset({victim.thread_id()}))
        # Decided as idle, but in a transaction now: not the session that was judged.
        victim.cursor().execute("START TRANSACTION")
        victim.cursor().execute("SELECT * FROM t")
        assert not reaper.still_a_victim(connection, decided, frozenset())
        victim.rollback()
        # It ran a statement just now: no longer idle long enough.
        assert not reaper.still_a_victim(connection, decided, frozenset())
        idle_for(3.1)
        # Without the lease: never.
        connection.exec_driver_sql("SELECT RELEASE_ALL_LOCKS()")
        assert not reaper.still_a_victim(connection, decided, frozenset())
        assert reaper.lease.hold() is connection
        assert reaper.still_a_victim(connection, decided, frozenset())
        assert sessions.alive(victim)
    finally:
        job.close()
        audit.close()


def test_one_replica_holds_the_lease(mariadb, pg, world, sessions):
    victim = sessions.open(world["web"], world["orders"])
    first, audit1, _metrics1 = reaper_for(mariadb, pg, world, dry_run=True)
    second, audit2, metrics2 = reaper_for(mariadb, pg, world, dry_run=True)
    try:
        idle_for()
        assert first.reaper.lease.hold() is not None
        assert second.reaper.run() == 0
        assert metrics2.registry.get_sample_value("poolwatch_reaper_leader", {"target": "my"}) == 0
        first.close()  # releases the lock before its session ends: free at once, for whoever asks next
        lock = first.reaper.lease.params["lock_name"]
        assert mariadb.execute("SELECT IS_FREE_LOCK(%s)", (lock,))[0][0] == 1
        assert second.reaper.run() >= 1
        assert sessions.alive(victim)
    finally:
        first.close()
        second.close()
        audit1.close()
        audit2.close()


def test_client_hosts_scope_the_reaper(mariadb, pg, world, sessions):
    """The server listens on 127.0.0.1 and a socket; MySQL shows a socket client's host as
    ``localhost`` and a TCP client's as ``127.0.0.1:port``, matched without the port."""
    web, orders = world["web"], world["orders"]
    over_tcp = sessions.open(web, orders)
    over_socket = sessions.open(web, orders, unix_socket=str(mariadb.socket))
    hosts = {row[0]: row[1] for row in mariadb.execute("SELECT ID, HOST FROM information_schema.PROCESSLIST")}
    assert hosts[over_tcp.thread_id()].startswith("127.0.0.1:")
    assert hosts[over_socket.thread_id()] == "localhost"
    job, audit, _ = reaper_for(mariadb, pg, world, hosts=["127.0.0.*"])
    try:
        idle_for()
        assert job.reaper.run() == 1
        assert not sessions.alive(over_tcp)
        assert sessions.alive(over_socket)  # outside hosts
    finally:
        job.close()
        audit.close()
    over_tcp = sessions.open(web, orders)
    job, audit, _ = reaper_for(mariadb, pg, world, exclude_hosts=["127.0.0.1"])
    try:
        idle_for()
        assert job.reaper.run() == 1
        assert sessions.alive(over_tcp)  # excluded by host
        assert not sessions.alive(over_socket)
    finally:
        job.close()
        audit.close()


def test_program_names_protect_sessions_with_performance_schema_on(mariadb_factory, pg, world):
    """With performance_schema on, the program_name connection attribute is each session's
    application, readable with the grants file's SELECT on session_connect_attrs: a policy can
    protect a program by name while the same user's other sessions are reaped."""
    server = mariadb_factory(performance_schema=True)
    web, orders = world["web"], world["orders"]
    server.execute(f"CREATE DATABASE {orders}")
    server.execute(f"CREATE TABLE {orders}.t (id int PRIMARY KEY) ENGINE=InnoDB")
    server.create_user(web, "pw", f"ALL ON {orders}.*")
    create_from_grants_file(server, world["watch"])
    opened = Sessions(server)
    victim = opened.open(web, orders, program_name="web-1")
    protected = opened.open(web, orders, program_name="batch-7")
    job, audit, _ = reaper_for(server, pg, world, exclude_applications=["batch-*"])
    try:
        idle_for()
        assert job.reaper.run() == 1
        assert not opened.alive(victim)
        assert opened.alive(protected)
    finally:
        job.close()
        audit.close()
        opened.close()


def test_the_mysql_and_mariadb_grants_files_differ_in_the_kill_grant_only():
    mysql = statements((SQL_DIR / "mysql-grants.sql").read_text())
    mariadb = statements((SQL_DIR / "mariadb-grants.sql").read_text())
    assert [s for s in mysql if s not in mariadb] == ["GRANT CONNECTION_ADMIN ON *.* TO 'poolwatch'@'%'"]
    assert [s for s in mariadb if s not in mysql] == ["GRANT CONNECTION ADMIN ON *.* TO 'poolwatch'@'%'"]


@pytest.mark.parametrize(
    ("grants", "killed"),
    [
        # deploy/sql/mariadb-grants.sql, as it is.
        (None, True),
        # Without CONNECTION ADMIN (or SUPER) MariaDB refuses KILL of another user's thread.
        (("PROCESS ON *.*", "SELECT (User, Super_priv) ON mysql.user"), False),
        # Without mysql.user nobody's superuser status is known: nobody is a victim.
        (("PROCESS, CONNECTION ADMIN ON *.*",), False),
    ],
    ids=["grants-file", "no-connection-admin", "no-mysql-user"],
)
def test_least_privilege(mariadb, pg, world, sessions, grants, killed):
    watcher = f"w_{uuid.uuid4().hex[:6]}"
    if grants is None:
        create_from_grants_file(mariadb, watcher)
        shown = " ".join(row[0] for row in mariadb.execute(f"SHOW GRANTS FOR '{watcher}'@'%'"))
        assert re.search(r"GRANT PROCESS, CONNECTION ADMIN ON \*\.\*", shown), shown
    else:
        mariadb.create_user(watcher, "pw", *grants)
    victim = sessions.open(world["web"], world["orders"])
    job, audit, metrics = reaper_for(mariadb, pg, world, watch=watcher)
    try:
        idle_for()
        job.run()
        assert sessions.alive(victim) is not killed
        errors = metrics.registry.get_sample_value("poolwatch_reaper_errors_total", {"target": "my"})
        assert errors == (1 if grants and grants[0] == "PROCESS ON *.*" else 0)
    finally:
        job.close()
        audit.close()


def test_kill_through_a_stored_procedure(mariadb, pg, world, sessions):
    """As on Amazon RDS (``mysql.rds_kill``): the procedure runs with its definer's rights, so the
    poolwatch user needs EXECUTE on it instead of CONNECTION ADMIN."""
    schema = f"kills_{uuid.uuid4().hex[:6]}"
    watcher = f"w_{uuid.uuid4().hex[:6]}"
    mariadb.execute(f"CREATE DATABASE {schema}")
    mariadb.execute(
        f"CREATE DEFINER = admin@'%' PROCEDURE {schema}.kill_connection(IN id BIGINT) "
        "SQL SECURITY DEFINER KILL CONNECTION id"
    )
    mariadb.create_user(
        watcher,
        "pw",
        "PROCESS ON *.*",
        "SELECT (User, Super_priv) ON mysql.user",
        f"EXECUTE ON PROCEDURE {schema}.kill_connection",
    )
    victim = sessions.open(world["web"], world["orders"])
    job, audit, _ = reaper_for(mariadb, pg, world, watch=watcher, kill_procedure=f"{schema}.kill_connection")
    try:
        idle_for()
        assert job.reaper.run() == 1
        assert not sessions.alive(victim)
    finally:
        job.close()
        audit.close()
