"""PgBouncer targets against a real PgBouncer in front of the test PostgreSQL: the probe, pool health
from the admin console, an exhaustion, wrong credentials, and a restart."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from tests.daemonkit import Samples, found, metric, running_daemon, scrape, value, wait_for

pytestmark = pytest.mark.integration


def target(bouncer, *, password=None, name="pgb", applications=()):
    url = bouncer.console_url()  # a stats_users member: read-only
    if password is not None:
        url = url.replace(bouncer.stats_password, password)
    return {
        "name": name,
        "kind": "pgbouncer",
        "url": url,
        "probe": {"interval": 0.5, "timeout": 0.5},
        "census": {"interval": 0.5, "timeout": 0.5, "applications": list(applications)},
    }


def pgb(samples: Samples, name: str, **labels: str) -> float:
    """A PgBouncer sample of target pgb; -1 while it is not published (the first stats run may not
    have happened yet)."""
    got = found(samples, f"poolwatch_pgbouncer_{name}", target="pgb", **labels)
    return -1.0 if got is None else got


def test_pool_health_and_waiting_clients_during_an_exhaustion(pgbouncer_factory):
    bouncer = pgbouncer_factory(pool_size=2)
    user = bouncer.app_user
    holders = [bouncer.client(application_name="holder") for _ in range(2)]
    waiter = bouncer.client(application_name="waiter")
    waited = threading.Event()
    try:
        with running_daemon({"targets": [target(bouncer, applications=["holder", "waiter"])]}) as daemon:
            wait_for(lambda: metric(daemon, "poolwatch_up", target="pgb") == 1, what="up")
            # Two transactions hold both server connections of the pool ...
            for holder in holders:
                holder.cursor().execute("SELECT 1")  # psycopg2 opened a transaction: it stays open

            # ... so a third client waits for one.
            def wait_for_a_connection() -> None:
                waiter.cursor().execute("SELECT 1")
                waited.set()

            thread = threading.Thread(target=wait_for_a_connection, daemon=True)
            thread.start()

            def waiting() -> bool:
                samples = scrape(daemon)
                return (
                    pgb(samples, "client_connections", database="postgres", user=user, state="waiting") >= 1
                    and pgb(samples, "client_max_wait_seconds", database="postgres", user=user) > 0
                )

            wait_for(waiting, what="a waiting client and its wait")
            assert not waited.is_set()
            samples = scrape(daemon)
            assert pgb(samples, "server_connections", database="postgres", user=user, state="active") == 2
            assert pgb(samples, "pool_mode", database="postgres", user=user, mode="transaction") == 1
            assert pgb(samples, "database_pool_size", database="postgres") == 2
            # max_db_connections (pool_size x 4 in tests.pgbouncer).
            assert pgb(samples, "database_max_connections", database="postgres") == 8
            # SHOW CLIENTS: each client by its application_name and state; poolwatch's own console
            # connection is a client too, its name not in census.applications: folded.
            clients = {"database": "postgres", "user": user}
            assert pgb(samples, "clients", **clients, application="holder", state="active") == 2
            assert pgb(samples, "clients", **clients, application="waiter", state="waiting") == 1
            console = {"database": "pgbouncer", "user": bouncer.stats, "application": ""}
            assert pgb(samples, "clients", **console, state="active") == 1
            assert pgb(samples, "config_max_client_connections") == 100
            assert pgb(samples, "list_items", list="pools") >= 1
            assert value(samples, "poolwatch_target_info", target="pgb", kind="pgbouncer") == 1
            # The waiting ends when a holder commits; the stats move on.
            holders[0].commit()
            assert waited.wait(10)
            thread.join(5)

            def served() -> bool:
                samples = scrape(daemon)
                return (
                    pgb(samples, "client_connections", database="postgres", user=user, state="waiting") == 0
                    and pgb(samples, "queries_total", database="postgres") >= 3
                    and pgb(samples, "client_wait_seconds_total", database="postgres") > 0
                )

            wait_for(served, what="the queue drained, counters counted")
    finally:
        for connection in (*holders, waiter):
            connection.close()


def test_wrong_admin_password_is_an_auth_failure(pgbouncer_factory):
    bouncer = pgbouncer_factory()
    with running_daemon({"targets": [target(bouncer, password="wrong")]}) as daemon:
        wait_for(
            lambda: metric(daemon, "poolwatch_probe_failures_total", target="pgb", reason="auth") >= 1,
            what="an auth failure",
        )
        assert metric(daemon, "poolwatch_up", target="pgb") == 0
        status = str(daemon.status())  # what /status and the status page show
        assert "SASL authentication failed" in status or "password authentication failed" in status
        assert bouncer.stats_password not in status
        assert "wrong" not in status


@pytest.mark.destructive
def test_a_restart_takes_the_target_down_and_back_up(pgbouncer_factory):
    bouncer = pgbouncer_factory()
    with running_daemon({"targets": [target(bouncer)]}) as daemon:
        wait_for(lambda: metric(daemon, "poolwatch_up", target="pgb") == 1, what="up")
        wait_for(lambda: "poolwatch_pgbouncer_version_info" in str(scrape(daemon)), what="stats")
        bouncer.kill()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="pgb") == 0, what="down")
        # Stats from a console we cannot reach are withdrawn, not kept as a guess.
        wait_for(lambda: "poolwatch_pgbouncer_version_info" not in str(scrape(daemon)), what="withdrawn")
        bouncer.start()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="pgb") == 1, what="up again")
        wait_for(lambda: "poolwatch_pgbouncer_version_info" in str(scrape(daemon)), what="stats again")


def test_the_console_user_poolwatch_is_given_is_read_only(pgbouncer_factory):
    """poolwatch needs no admin_users membership: stats_users may run every SHOW it uses (the
    exhaustion test reads them all as that user), and none of PgBouncer's admin commands."""
    bouncer = pgbouncer_factory()
    connection = bouncer.admin_connection(stats=True)
    try:
        with connection.cursor() as cursor:
            for what in ("POOLS", "CLIENTS", "DATABASES", "STATS", "LISTS", "CONFIG", "VERSION"):
                cursor.execute(f"SHOW {what}")
                assert cursor.fetchall(), what
    finally:
        connection.close()
    for command in ("PAUSE", "RELOAD", "SHOW FDS"):
        connection = bouncer.admin_connection(stats=True)
        try:
            with pytest.raises(psycopg2.Error, match="admin access needed"), connection.cursor() as cursor:
                cursor.execute(command)
        finally:
            connection.close()
