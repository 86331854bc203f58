"""The PostgreSQL reaper against a real server: what it terminates, what survives, and its guards."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import psycopg2
import pytest
from prometheus_client import CollectorRegistry

from poolwatch.config import validate
from poolwatch.daemon import Daemon
from poolwatch.metrics import Metrics
from poolwatch.reaper.audit import AuditLog
from poolwatch.reaper.job import build_postgres_reaper
from poolwatch.reaper.own import OwnBackends
from poolwatch.reaper.policy import IDLE_IN_TRANSACTION, Victim
from poolwatch.reaper.postgres import snapshot, terminate
from tests.idle import wait_pg_idle

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.integration


class Sessions:
    """Client sessions a test opens (by application, user, database, state) and closes at the end."""

    def __init__(self, pg) -> None:
        self.pg = pg
        self.opened: list[psycopg2.extensions.connection] = []

    def open(self, application, *, user=None, password=None, database="postgres", state="idle"):
        connection = psycopg2.connect(
            self.pg.dsn(user=user, password=password, dbname=database), application_name=application
        )
        self.opened.append(connection)
        if state == "idle":
            connection.autocommit = True
        connection.cursor().execute("SELECT 1")  # without autocommit: idle in transaction
        return connection

    def pid(self, connection) -> int:
        return int(connection.info.backend_pid)

    def alive(self, connection) -> bool:
        rows = self.pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (self.pid(connection),))
        return bool(rows)

    def close(self) -> None:
        for connection in self.opened:
            connection.close()


@pytest.fixture
def sessions(pg):
    opened = Sessions(pg)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def world(pg):
    """A non-superuser application role, a second role, a second database, an audit database."""
    tag = uuid.uuid4().hex[:6]
    names = {
        "web": f"web_{tag}",
        "other": f"other_{tag}",
        "orders": f"orders_{tag}",
        "billing": f"billing_{tag}",
        "audit": f"audit_{tag}",
        "root": f"root_{tag}",
    }
    for role in ("web", "other"):
        pg.create_role(names[role], "pw")
    pg.create_role(names["root"], "pw", superuser=True)
    for database in ("orders", "billing", "audit"):
        pg.create_database(names[database])
    return names


def target(pg, world, name, app, **reaper):
    defaults = {
        "enabled": True,
        "dry_run": False,
        "interval": 0.5,
        "timeout": 0.5,
        "idle_timeout": 1,
        "applications": [f"{app}*"],
        "databases": [world["orders"]],
        "users": [world["web"]],
    }
    return {
        "name": name,
        "kind": "postgres",
        "url": pg.url(),
        "pool": {"application_name": f"{app}-poolwatch"},  # matches the glob: must survive anyway
        "probe": {"interval": 5, "timeout": 2},
        "census": {"interval": 5, "timeout": 2},
        "reaper": {**defaults, **reaper},
    }


def audit_settings(pg, world, **extra):
    return {"url": pg.url(database=world["audit"]), "table": "poolwatch_audit", **extra}


def reaper_for(pg, world, app, *, registry=None, own=None, **reaper):
    settings = validate(
        {
            "targets": [target(pg, world, "db", app, **reaper)],
            "audit": audit_settings(pg, world),
        }
    )
    metrics = Metrics(registry or CollectorRegistry())
    audit = AuditLog(settings.audit, metrics.reaper)
    job = build_postgres_reaper(settings.targets[0], audit, metrics.reaper, own or OwnBackends())
    return job, audit, metrics


def audit_rows(pg, world, app):
    if not pg.execute("SELECT to_regclass('poolwatch_audit')", dbname=world["audit"])[0][0]:
        return []
    return pg.execute(
        "SELECT pid, reason, mode, username, database, application FROM poolwatch_audit "
        "WHERE application LIKE %s ORDER BY id",
        (f"{app}%",),
        dbname=world["audit"],
    )


def counter(metrics, **labels) -> float:
    return metrics.registry.get_sample_value("poolwatch_reaper_terminated_total", labels) or 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def reaper_runs(metrics) -> float:
    labels = {"task": "reaper", "target": "db"}
    return metrics.registry.get_sample_value("poolwatch_job_duration_seconds_count", labels) or 0.0


def test_daemon_terminates_idle_sessions_in_policy_and_nothing_else(pg, world, sessions):
    app = f"web-{uuid.uuid4().hex[:6]}"
    web, orders = world["web"], world["orders"]
    victim = sessions.open(app, user=web, password="pw", database=orders)
    survivors = {
        "other user": sessions.open(app, user=world["other"], password="pw", database=orders),
        "other database": sessions.open(app, user=web, password="pw", database=world["billing"]),
        "other application": sessions.open("batch-job", user=web, password="pw", database=orders),
        "superuser": sessions.open(app, user=world["root"], password="pw", database=orders),
    }
    active = sessions.open(app, user=web, password="pw", database=orders)
    sleeper = threading.Thread(target=lambda: active.cursor().execute("SELECT pg_sleep(4)"))
    sleeper.start()
    settings = validate(
        {
            "http": {"listen": "127.0.0.1:0"},
            # As a superuser the server refuses nothing: every survivor below is the policy's doing.
            # The superuser is inside the scope: only the superuser rule keeps its session alive.
            "targets": [target(pg, world, "db", app, users=[web, world["root"]])],
            "audit": audit_settings(pg, world),
        }
    )
    daemon = Daemon(settings, metrics=Metrics(CollectorRegistry()))
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert wait_for(lambda: not sessions.alive(victim), timeout=8)
        runs = reaper_runs(daemon.metrics)
        assert wait_for(lambda: reaper_runs(daemon.metrics) >= runs + 2)  # more runs: nothing else
        for why, connection in survivors.items():
            assert sessions.alive(connection), why
        own = pg.backends(f"{app}-poolwatch")
        assert own, "poolwatch's own pool sessions exist"
        sleeper.join()
        assert sessions.alive(active)
        rows = audit_rows(pg, world, app)
        assert [(r[0], r[1], r[2]) for r in rows] == [(sessions.pid(victim), "idle", "enforce")]
        assert counter(daemon.metrics, target="db", reason="idle", mode="enforce") == 1
        assert daemon.metrics.registry.get_sample_value("poolwatch_reaper_leader", {"target": "db"}) == 1
    finally:
        daemon.stop()
        runner.join(10)


def test_the_first_run_creates_the_audit_table_with_its_schema_version(pg, sessions):
    database = f"fresh_{uuid.uuid4().hex[:6]}"
    pg.create_database(database)
    world = {"orders": "none", "web": "none", "audit": database}
    job, audit, _ = reaper_for(pg, world, "nothing-matches")
    try:
        assert not pg.execute("SELECT to_regclass('poolwatch_audit')", dbname=database)[0][0]
        job.run()
        assert pg.execute("SELECT version FROM poolwatch_audit_schema", dbname=database) == [(1,)]
        assert pg.execute("SELECT count(*) FROM poolwatch_audit", dbname=database) == [(0,)]
        job.run()  # and accepts it from then on
    finally:
        job.close()
        audit.close()


def test_idle_in_transaction_has_its_own_timeout(pg, world, sessions):
    app = f"web-{uuid.uuid4().hex[:6]}"
    kwargs = {"user": world["web"], "password": "pw", "database": world["orders"]}
    idle = sessions.open(app, **kwargs)
    in_transaction = sessions.open(app, state="idle in transaction", **kwargs)
    job, audit, _metrics = reaper_for(pg, world, app, idle_timeout=3600, idle_in_transaction_timeout=0.5)
    try:
        wait_pg_idle(pg, [sessions.pid(in_transaction)], 0.5, states=IDLE_IN_TRANSACTION)
        job.run()
        assert not sessions.alive(in_transaction)
        assert sessions.alive(idle)
        assert [r[1] for r in audit_rows(pg, world, app)] == ["idle_in_transaction"]
    finally:
        job.close()
        audit.close()


def test_dry_run_terminates_nothing_and_records_candidates(pg, world, sessions):
    app = f"web-{uuid.uuid4().hex[:6]}"
    kwargs = {"user": world["web"], "password": "pw", "database": world["orders"]}
    idle = [sessions.open(app, **kwargs) for _ in range(2)]
    job, audit, metrics = reaper_for(pg, world, app, dry_run=True, idle_timeout=0.5)
    try:
        wait_pg_idle(pg, [sessions.pid(c) for c in idle], 0.5)
        job.run()
        job.run()  # the same candidates again: recorded once while they stay candidates
        assert all(sessions.alive(c) for c in idle)
        rows = audit_rows(pg, world, app)
        assert sorted(r[0] for r in rows) == sorted(sessions.pid(c) for c in idle)
        assert {r[2] for r in rows} == {"dry_run"}
        assert counter(metrics, target="db", reason="idle", mode="dry_run") == 2
        assert counter(metrics, target="db", reason="idle", mode="enforce") == 0
    finally:
        job.close()
        audit.close()


def test_max_per_run_holds(pg, world, sessions):
    app = f"web-{uuid.uuid4().hex[:6]}"
    kwargs = {"user": world["web"], "password": "pw", "database": world["orders"]}
    opened = [sessions.open(app, **kwargs) for _ in range(5)]
    job, audit, _ = reaper_for(pg, world, app, idle_timeout=0.5, max_per_run=2)
    try:
        wait_pg_idle(pg, [sessions.pid(c) for c in opened], 0.5)
        job.run()
        assert sum(not sessions.alive(c) for c in opened) == 2
        job.run()
        assert sum(not sessions.alive(c) for c in opened) == 4
    finally:
        job.close()
        audit.close()


def test_the_kill_statement_rechecks_pid_backend_start_and_state(pg, world, sessions):
    app = f"web-{uuid.uuid4().hex[:6]}"
    kwargs = {"user": world["web"], "password": "pw", "database": world["orders"]}
    victim = sessions.open(app, **kwargs)
    job, audit, _ = reaper_for(pg, world, app, idle_timeout=0.5)
    lease, policy = job.reaper.lease, job.reaper.policy
    try:
        wait_pg_idle(pg, [sessions.pid(victim)], 0.5)
        connection = lease.hold()
        assert connection is not None
        _now, found = snapshot(connection)
        (session,) = [s for s in found if s.pid == sessions.pid(victim)]
        decided = Victim(session, "idle", 1.0)
        # Same pid, another session start: a reused pid is never killed.
        assert session.backend_start is not None
        reused = replace(
            decided,
            session=replace(
                session,
                backend_start=session.backend_start.replace(
                    microsecond=(session.backend_start.microsecond + 1) % 1_000_000
                ),
            ),
        )
        assert not terminate(connection, reused, policy, frozenset(), lease.params)
        # The session did something since the decision: no longer idle long enough.
        victim.cursor().execute("SELECT 1")
        assert not terminate(connection, decided, policy, frozenset(), lease.params)
        assert sessions.alive(victim)
        # One of ours (the pid passed as own): never.
        wait_pg_idle(pg, [sessions.pid(victim)], 0.5)
        assert not terminate(connection, decided, policy, frozenset({session.pid}), lease.params)
        # Without the lease (the lock was released on this connection): never.
        connection.exec_driver_sql("SELECT pg_advisory_unlock_all()")
        assert not terminate(connection, decided, policy, frozenset(), lease.params)
        assert sessions.alive(victim)
        assert lease.hold() is connection  # the lease is taken again ...
        assert terminate(connection, decided, policy, frozenset(), lease.params)  # ... and now it goes
        assert wait_for(lambda: not sessions.alive(victim), timeout=5)
    finally:
        job.close()
        audit.close()


def test_own_backends_follow_the_engines_connections(pg):
    from sqlalchemy import create_engine

    own = OwnBackends()
    engine = create_engine(pg.url(), pool_size=2)
    own.track(engine)
    own.track(engine)  # once per engine
    try:
        with engine.connect() as first, engine.connect() as second:
            assert first.connection.dbapi_connection is not None
            assert second.connection.dbapi_connection is not None
            pids = {
                first.connection.dbapi_connection.info.backend_pid,
                second.connection.dbapi_connection.info.backend_pid,
            }
            assert own.pids() == pids
        engine.dispose()
        assert own.pids() == frozenset()
    finally:
        engine.dispose()


def test_runbook_dry_run_then_reload_to_enforce(pg, world, sessions):
    app = f"web-{uuid.uuid4().hex[:6]}"
    victim = sessions.open(app, user=world["web"], password="pw", database=world["orders"])

    def config(dry_run):
        return validate(
            {
                "http": {"listen": "127.0.0.1:0"},
                "targets": [target(pg, world, "db", app, dry_run=dry_run)],
                "audit": audit_settings(pg, world),
            }
        )

    settings = {"now": config(dry_run=True)}
    daemon = Daemon(settings["now"], metrics=Metrics(CollectorRegistry()), loader=lambda: settings["now"])
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert wait_for(lambda: [r[2] for r in audit_rows(pg, world, app)][:1] == ["dry_run"])
        assert sessions.alive(victim)
        settings["now"] = config(dry_run=False)
        daemon.reload()
        assert wait_for(lambda: not sessions.alive(victim))
        modes = {r[2] for r in audit_rows(pg, world, app)}
        assert modes == {"dry_run", "enforce"}
    finally:
        daemon.stop()
        runner.join(10)


def _reaper_runs_after(daemon, moment, runs=2):
    """Wait until the reaper of "db" has succeeded ``runs`` times after ``moment`` (wall clock)."""
    seen = set()

    def ran():
        last = daemon.metrics.registry.get_sample_value(
            "poolwatch_job_last_success_timestamp_seconds", {"task": "reaper", "target": "db"}
        )
        if last is not None and last > moment:
            seen.add(last)
        return len(seen) >= runs

    return wait_for(ran)


def test_reload_to_enforce_is_refused_while_the_daemon_runs_without_an_audit_table(
    pg, world, sessions, caplog
):
    """The file now names an audit database and turns enforcement on; but the running audit log
    has no table and is only replaced by a restart: killing now would leave no audit row."""
    caplog.set_level(logging.WARNING)  # whatever level an earlier test left the root logger at
    app = f"web-{uuid.uuid4().hex[:6]}"
    victim = sessions.open(app, user=world["web"], password="pw", database=world["orders"])
    base = {"http": {"listen": "127.0.0.1:0"}}
    dry = validate({**base, "targets": [target(pg, world, "db", app, dry_run=True)]})
    enforce = validate(
        {
            **base,
            "targets": [target(pg, world, "db", app, dry_run=False)],
            "audit": audit_settings(pg, world, table="poolwatch_audit_refused"),
        }
    )
    settings = {"now": dry}
    daemon = Daemon(dry, metrics=Metrics(CollectorRegistry()), loader=lambda: settings["now"])
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert wait_for(lambda: counter(daemon.metrics, target="db", reason="idle", mode="dry_run") >= 1)
        settings["now"] = enforce
        reloaded_at = time.time()
        daemon.reload()
        assert _reaper_runs_after(daemon, reloaded_at)
        assert sessions.alive(victim)
        assert counter(daemon.metrics, target="db", reason="idle", mode="enforce") == 0
        assert daemon.settings.targets[0].reaper.dry_run
        refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert len(refused) == 1, refused
        assert "dry_run false needs audit.url" in refused[0]
        assert "audit settings take effect after a restart" in refused[0]
    finally:
        daemon.stop()
        runner.join(10)


def test_reloaded_reapers_record_in_the_running_audit_table_until_a_restart(pg, world, sessions, caplog):
    caplog.set_level(logging.WARNING)  # whatever level an earlier test left the root logger at
    app = f"web-{uuid.uuid4().hex[:6]}"

    def config(table, max_per_run):
        return validate(
            {
                "http": {"listen": "127.0.0.1:0"},
                "targets": [target(pg, world, "db", app, max_per_run=max_per_run)],
                "audit": audit_settings(pg, world, table=table),
            }
        )

    settings = {"now": config("poolwatch_audit", 20)}
    daemon = Daemon(settings["now"], metrics=Metrics(CollectorRegistry()), loader=lambda: settings["now"])
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert _reaper_runs_after(daemon, 0, runs=1)
        # Another table, and a target changed too, so its reaper is built again during the reload.
        settings["now"] = config("poolwatch_audit_elsewhere", 19)
        reloaded_at = time.time()
        daemon.reload()
        assert _reaper_runs_after(daemon, reloaded_at, runs=1)
        assert daemon.runtime("db").settings.reaper.max_per_run == 19
        victim = sessions.open(app, user=world["web"], password="pw", database=world["orders"])
        assert wait_for(lambda: not sessions.alive(victim))
        assert wait_for(lambda: [r[0] for r in audit_rows(pg, world, app)] == [sessions.pid(victim)])
        elsewhere = pg.execute("SELECT to_regclass('poolwatch_audit_elsewhere')", dbname=world["audit"])
        assert elsewhere == [(None,)]
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert "reload: audit settings changed; they take effect after a restart" in warned
        assert daemon.settings.audit.table == "poolwatch_audit"
    finally:
        daemon.stop()
        runner.join(10)


def test_client_hosts_scope_and_a_socket_client_has_no_host(pg, world, sessions):
    """A TCP client's host is its ``client_addr``; a unix-socket client has none, so with a host
    scope it is never a victim, whether the scope includes or excludes."""
    app = f"web-{uuid.uuid4().hex[:6]}"
    kwargs = {"user": world["web"], "password": "pw", "database": world["orders"]}
    over_tcp = sessions.open(app, **kwargs)
    over_socket = psycopg2.connect(
        pg.dsn(user=world["web"], password="pw", dbname=world["orders"]),
        host=str(pg.sockdir),
        application_name=app,
    )
    over_socket.autocommit = True
    sessions.opened.append(over_socket)
    shown = dict(
        pg.execute("SELECT pid, host(client_addr) FROM pg_stat_activity WHERE application_name = %s", (app,))
    )
    assert shown == {sessions.pid(over_tcp): "127.0.0.1", sessions.pid(over_socket): None}
    job, audit, _metrics = reaper_for(pg, world, app, exclude_hosts=["10.*"])
    try:
        wait_pg_idle(pg, [sessions.pid(over_tcp), sessions.pid(over_socket)], 1)
        job.run()
        assert not sessions.alive(over_tcp)  # not excluded
        assert sessions.alive(over_socket)  # no host: never reaped under a host scope
    finally:
        job.close()
        audit.close()
    over_tcp = sessions.open(app, **kwargs)
    job, audit, _metrics = reaper_for(pg, world, app, exclude_hosts=["127.0.0.*"])
    try:
        wait_pg_idle(pg, [sessions.pid(over_tcp)], 1)
        job.run()
        assert sessions.alive(over_tcp)
        assert sessions.alive(over_socket)
    finally:
        job.close()
        audit.close()
    job, audit, _metrics = reaper_for(pg, world, app)  # no host scope: the socket client is reaped
    try:
        job.run()
        assert not sessions.alive(over_socket)
    finally:
        job.close()
        audit.close()
