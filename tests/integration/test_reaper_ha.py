"""Several replicas, an audit database that goes away, and the least-privilege role from deploy/sql."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from prometheus_client import CollectorRegistry

from poolwatch.config import validate
from poolwatch.metrics import Metrics
from poolwatch.reaper.audit import AuditLog, schema_sql
from poolwatch.reaper.job import build_postgres_reaper
from poolwatch.reaper.own import OwnBackends
from tests.daemonkit import wait_for
from tests.idle import wait_pg_idle

pytestmark = pytest.mark.integration

SQL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sql"


def open_idle(pg, application, n, **dsn):
    connections = []
    for _ in range(n):
        connection = psycopg2.connect(pg.dsn(**dsn), application_name=application)
        connection.autocommit = True
        connection.cursor().execute("SELECT 1")
        connections.append(connection)
    return connections


def alive(pg, connection) -> bool:
    return bool(pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (connection.info.backend_pid,)))


def gone(pg, connections, timeout: float = 5.0) -> bool:
    """True once every connection's backend has exited (termination is asynchronous)."""
    deadline = time.monotonic() + timeout
    while any(alive(pg, c) for c in connections):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_idle(pg, connections, seconds: float = 0.3) -> None:
    """Until every connection's session has been idle past ``make_replica``'s idle timeout."""
    wait_pg_idle(pg, [c.info.backend_pid for c in connections], seconds)


def make_replica(pg, app, audit, *, name="shared", url=None, **reaper):
    """A PostgreSQL reaper job enforcing on ``app*`` sessions idle 0.3 s (``reaper`` overrides)."""
    settings = validate(
        {
            "targets": [
                {
                    "name": name,
                    "kind": "postgres",
                    "url": url or pg.url(),
                    "reaper": {
                        "enabled": True,
                        "dry_run": False,
                        "interval": 0.5,
                        "timeout": 0.5,
                        "idle_timeout": 0.3,
                        "applications": [f"{app}*"],
                        **reaper,
                    },
                }
            ],
            "audit": audit,
        }
    )
    metrics = Metrics(CollectorRegistry())
    log = AuditLog(settings.audit, metrics.reaper)
    job = build_postgres_reaper(settings.targets[0], log, metrics.reaper, OwnBackends())
    return job, log, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no {name} sample with {labels}"
    return value


def leader(metrics: Metrics) -> float:
    return sample(metrics, "poolwatch_reaper_leader", target="shared")


@pytest.fixture(scope="module")
def user(pg):
    """A non-superuser the applications in these tests log in as."""
    name = f"app_{uuid.uuid4().hex[:6]}"
    pg.create_role(name, "pw")
    return {"user": name, "password": "pw"}


@pytest.fixture
def audit_db(pg):
    name = f"audit_{uuid.uuid4().hex[:6]}"
    pg.create_database(name)
    return name


def test_two_replicas_never_both_terminate_a_session(pg, audit_db, user):
    app = f"ha-{uuid.uuid4().hex[:6]}"
    audit = {"url": pg.url(database=audit_db)}
    replicas = [make_replica(pg, app, audit) for _ in range(2)]
    victims = open_idle(pg, app, 12, **user)
    try:
        wait_idle(pg, victims)
        barrier = threading.Barrier(2)

        def reap(job):
            barrier.wait()
            for _ in range(6):
                job.run()

        threads = [threading.Thread(target=reap, args=(job,)) for job, _, _ in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert gone(pg, victims)
        rows = pg.execute(
            "SELECT pid, replica FROM poolwatch_audit WHERE application = %s AND mode = 'enforce'",
            (app,),
            dbname=audit_db,
        )
        pids = [r[0] for r in rows]
        assert sorted(pids) == sorted(c.info.backend_pid for c in victims)  # each exactly once
        assert sorted(leader(m) for _, _, m in replicas) == [0, 1]
        killers = {
            sum(
                m.registry.get_sample_value(
                    "poolwatch_reaper_terminated_total",
                    {"target": "shared", "reason": "idle", "mode": "enforce"},
                )
                for _ in [0]
            )
            for _, _, m in replicas
        }
        assert killers == {0.0, 12.0}  # one replica did all of it
    finally:
        for job, log, _ in replicas:
            job.close()
            log.close()
        for connection in victims:
            connection.close()


def enforce_rows(pg, audit_db, app) -> list[int]:
    rows = pg.execute(
        "SELECT pid FROM poolwatch_audit WHERE application = %s AND mode = 'enforce'", (app,), dbname=audit_db
    )
    return sorted(r[0] for r in rows)


@contextlib.contextmanager
def frozen(connection):
    """The connection's backend stopped (SIGSTOP): signalled, it cannot exit until thawed, like a
    backend that gets no CPU on a loaded machine; it stays in pg_stat_activity, idle, meanwhile."""
    pid = connection.info.backend_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.destructive  # signals a backend process: a local server only
def test_a_terminated_session_that_is_still_exiting_is_not_terminated_or_recorded_again(pg, audit_db, user):
    app = f"ex-{uuid.uuid4().hex[:6]}"
    job, log, metrics = make_replica(pg, app, {"url": pg.url(database=audit_db)})
    victims = open_idle(pg, app, 3, **user)
    try:
        wait_idle(pg, victims)
        with frozen(victims[0]):
            job.run()  # signals all three
            assert gone(pg, victims[1:])
            assert alive(pg, victims[0])  # signalled, still listed as idle
            job.run()
            job.run()
        assert gone(pg, victims)
        log.flush()
        assert enforce_rows(pg, audit_db, app) == sorted(c.info.backend_pid for c in victims)
        labels = {"target": "shared", "reason": "idle", "mode": "enforce"}
        assert metrics.registry.get_sample_value("poolwatch_reaper_terminated_total", labels) == 3
    finally:
        job.close()
        log.close()
        for connection in victims:
            connection.close()


@pytest.mark.destructive  # signals a backend process: a local server only
def test_a_replica_taking_the_lease_over_while_a_victim_is_still_exiting_does_not_record_it_twice(
    pg, audit_db, user
):
    app = f"ex-{uuid.uuid4().hex[:6]}"
    audit = {"url": pg.url(database=audit_db)}
    (a, a_log, a_metrics), (b, b_log, b_metrics) = (make_replica(pg, app, audit) for _ in range(2))
    victims = open_idle(pg, app, 2, **user)
    try:
        wait_idle(pg, victims)
        with frozen(victims[0]):
            a.run()
            a.close()  # the lease goes to whoever asks next, while victims[0] is still listed
            # Unlocked before its session closed: no one holds the lock, even before the server has
            # seen that session go.
            held = pg.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %(lock_class)s"
                " AND objid = %(lock_key)s AND granted",
                a.reaper.lease.params,
            )
            assert held == [(0,)]
            assert alive(pg, victims[0])
            b.run()
            assert leader(b_metrics) == 1
        assert gone(pg, victims)
        a_log.flush()
        b_log.flush()
        assert enforce_rows(pg, audit_db, app) == sorted(c.info.backend_pid for c in victims)
        # Each termination counted once, by the replica that made it.
        labels = {"target": "shared", "reason": "idle", "mode": "enforce"}
        assert sample(a_metrics, "poolwatch_reaper_terminated_total", **labels) == 2
        assert sample(b_metrics, "poolwatch_reaper_terminated_total", **labels) == 0
    finally:
        for job, log in ((a, a_log), (b, b_log)):
            job.close()
            log.close()
        for connection in victims:
            connection.close()


def test_a_replica_that_loses_its_connection_loses_the_lease(pg, audit_db, user):
    app = f"ha-{uuid.uuid4().hex[:6]}"
    audit = {"url": pg.url(database=audit_db)}
    (a, a_log, a_metrics), (b, b_log, b_metrics) = (make_replica(pg, app, audit) for _ in range(2))
    try:
        a.run()
        b.run()
        assert (leader(a_metrics), leader(b_metrics)) == (1, 0)
        # The leader's session dies (failover, network, an operator): the server frees the lock.
        pid = a.reaper.lease.pid
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(
            lambda: not pg.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,)),
            what="the server freeing the lock",
        )
        b.run()
        assert leader(b_metrics) == 1
        outcome_error = None
        try:
            a.run()
        except Exception as exc:  # the lease connection is gone: the run fails, not leader
            outcome_error = exc
        assert outcome_error is not None
        assert leader(a_metrics) == 0
        a.run()  # reconnects, and finds the lease held elsewhere
        assert leader(a_metrics) == 0
        victims = open_idle(pg, app, 2, **user)
        wait_idle(pg, victims)
        a.run()
        assert all(alive(pg, c) for c in victims)  # only the leader acts
        b.run()
        assert gone(pg, victims)
    finally:
        for job, log in ((a, a_log), (b, b_log)):
            job.close()
            log.close()


@pytest.mark.destructive
def test_audit_rows_survive_an_audit_database_outage(pg, pg_factory, tmp_path, user):
    audit_server = pg_factory()
    app = f"out-{uuid.uuid4().hex[:6]}"
    spool = tmp_path / "spool.db"
    audit = {"url": audit_server.url(), "spool_path": str(spool), "connect_timeout": 2}
    job, log, metrics = make_replica(pg, app, audit)
    try:
        job.run()  # creates the table while the audit database is up
        audit_server.stop()
        victims = open_idle(pg, app, 3, **user)
        wait_idle(pg, victims)
        job.run()  # kills, records into the spool, cannot write
        assert gone(pg, victims)
        assert metrics.registry.get_sample_value("poolwatch_audit_spooled_records") == 3
        assert spooled_on_disk(spool) == 3
        log.close()
        job.close()
        # poolwatch restarts while the audit database is still down: the spool is read back from disk
        job, log, metrics = make_replica(pg, app, audit)
        assert metrics.registry.get_sample_value("poolwatch_audit_spooled_records") == 3
        audit_server.start()
        job.run()
        rows = audit_server.execute("SELECT pid FROM poolwatch_audit WHERE application = %s", (app,))
        assert sorted(r[0] for r in rows) == sorted(c.info.backend_pid for c in victims)
        assert metrics.registry.get_sample_value("poolwatch_audit_spooled_records") == 0
        assert metrics.registry.get_sample_value("poolwatch_audit_written_total") == 3
        assert spooled_on_disk(spool) == 0
    finally:
        job.close()
        log.close()


def spooled_on_disk(path: Path) -> int:
    """Records in the spool file, read by another connection (what a restart would find)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])


def test_the_spool_bound_drops_the_oldest_and_counts(tmp_path):
    from poolwatch.reaper.audit import AuditRecord

    settings = validate(
        {
            "audit": {
                "url": "postgresql://a@127.0.0.1:1/audit",
                "spool_max": 2,
                "spool_path": str(tmp_path / "s.db"),
            }
        }
    )
    metrics = Metrics(CollectorRegistry())
    log = AuditLog(settings.audit, metrics.reaper)
    for pid in (1, 2, 3):
        log.record(
            AuditRecord.make(
                target="t",
                kind="postgres",
                pid=pid,
                username="u",
                database="d",
                application="a",
                client_addr=None,
                state="idle",
                idle_seconds=5.0,
                query="SELECT 1",
                backend_start=None,
                reason="idle",
                mode="dry_run",
            )
        )
    assert log.spool is not None
    assert [r["pid"] for r in log.spool.peek()] == [2, 3]
    assert metrics.registry.get_sample_value("poolwatch_audit_dropped_records_total") == 1
    assert metrics.registry.get_sample_value("poolwatch_audit_spooled_records") == 2


def test_least_privilege_role_from_deploy_sql(pg, audit_db):
    """pg_monitor sees every session; pg_signal_backend terminates non-superusers only; the audit
    table made by deploy/sql/audit.sql is the one poolwatch writes, with INSERT and SELECT only."""
    role = f"poolwatch_{uuid.uuid4().hex[:6]}"
    role_sql = re.sub(r"\bpoolwatch\b", role, (SQL_DIR / "poolwatch-role.sql").read_text())
    for statement in _statements(role_sql):
        pg.execute(statement)
    pg.execute(f"ALTER ROLE {role} PASSWORD 'pw'")
    pg.execute(f"GRANT CONNECT ON DATABASE {audit_db} TO {role}")
    audit_sql = (SQL_DIR / "audit.sql").read_text().replace(" TO poolwatch;", f" TO {role};")
    pg.execute(audit_sql, dbname=audit_db)
    pg.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}", dbname=audit_db)
    app = f"lp-{uuid.uuid4().hex[:6]}"
    pg.create_role(f"{role}_app", "pw")
    victims = open_idle(pg, app, 1, user=f"{role}_app", password="pw")
    superuser = open_idle(pg, app, 1)
    job, log, metrics = make_replica(
        pg,
        app,
        {"url": pg.url(user=role, password="pw", database=audit_db)},
        name="lp",
        url=pg.url(user=role, password="pw"),
        allow_superusers=True,
    )
    try:
        wait_idle(pg, victims + superuser)
        job.run()
        assert gone(pg, victims)
        assert alive(pg, superuser[0])  # allowed by the policy, refused by the server
        assert metrics.registry.get_sample_value("poolwatch_reaper_errors_total", {"target": "lp"}) == 1
        rows = pg.execute("SELECT pid FROM poolwatch_audit", dbname=audit_db)
        assert [r[0] for r in rows] == [victims[0].info.backend_pid]
        expected = [re.sub(r"\s+", " ", s) for s in schema_sql("poolwatch_audit")]
        assert all(s.removesuffix(";") in re.sub(r"\s+", " ", audit_sql) for s in expected)
    finally:
        job.close()
        log.close()
        for connection in victims + superuser:
            connection.close()


def test_sessions_hidden_from_a_role_without_pg_monitor_are_never_terminated(pg, audit_db):
    role = f"nomon_{uuid.uuid4().hex[:6]}"
    pg.create_role(role, "pw")
    pg.execute(f"GRANT pg_signal_backend TO {role}")
    app = f"hid-{uuid.uuid4().hex[:6]}"
    pg.create_role(f"{role}_app", "pw")
    hidden = open_idle(pg, app, 1, user=f"{role}_app", password="pw")
    job, log, metrics = make_replica(
        pg,
        app,
        {"url": pg.url(database=audit_db)},
        name="hid",
        url=pg.url(user=role, password="pw"),
        applications=["*"],
    )
    try:
        wait_idle(pg, hidden)
        job.run()
        assert alive(pg, hidden[0])
        assert metrics.registry.get_sample_value("poolwatch_reaper_leader", {"target": "hid"}) == 1
    finally:
        job.close()
        log.close()
        hidden[0].close()


def _statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def test_two_daemons_on_one_target_never_both_terminate_a_session(pg, audit_db, user):
    from poolwatch.daemon import Daemon

    app = f"dd-{uuid.uuid4().hex[:6]}"
    settings = validate(
        {
            "http": {"listen": "127.0.0.1:0"},
            "targets": [
                {
                    "name": "shared",
                    "kind": "postgres",
                    "url": pg.url(),
                    "probe": {"interval": 5, "timeout": 2},
                    "census": {"enabled": False},
                    "reaper": {
                        "enabled": True,
                        "dry_run": False,
                        "interval": 0.2,
                        "timeout": 0.2,
                        "idle_timeout": 0.3,
                        "applications": [f"{app}*"],
                    },
                }
            ],
            "audit": {"url": pg.url(database=audit_db)},
        }
    )
    daemons = [Daemon(settings, metrics=Metrics(CollectorRegistry())) for _ in range(2)]
    runners = [threading.Thread(target=d.run, daemon=True) for d in daemons]
    for runner in runners:
        runner.start()
    victims = []
    try:
        for _ in range(4):  # waves of idle sessions while both daemons run, one after the other
            wave = open_idle(pg, app, 4, **user)
            victims += wave
            assert gone(pg, wave, timeout=10)
        rows = pg.execute(
            "SELECT pid FROM poolwatch_audit WHERE application = %s AND mode = 'enforce'",
            (app,),
            dbname=audit_db,
        )
        assert sorted(r[0] for r in rows) == sorted(c.info.backend_pid for c in victims)
        labels = {"target": "shared", "reason": "idle", "mode": "enforce"}
        counts = sorted(sample(d.metrics, "poolwatch_reaper_terminated_total", **labels) for d in daemons)
        assert counts == [0, len(victims)]
        assert sorted(leader(d.metrics) for d in daemons) == [0, 1]
    finally:
        for daemon in daemons:
            daemon.stop()
        for runner in runners:
            runner.join(10)
        for connection in victims:
            connection.close()
