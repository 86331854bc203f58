"""MySQL / MariaDB targets against a real MariaDB: pool and probe, the census, errors by reason, and a
server restart."""

from __future__ import annotations

import contextlib
import threading
import uuid

import pymysql
import pytest
from prometheus_client import CollectorRegistry

from poolwatch.census import mysql as mysql_census
from poolwatch.config import validate
from poolwatch.database import Database
from poolwatch.errors import AuthenticationFailedError, DatabaseUnavailableError
from poolwatch.metrics import Metrics
from tests.daemonkit import found, metric, running_daemon, scrape, value, wait_for
from tests.mariadb import Sessions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(mariadb):
    """An application user with its database (an InnoDB table in it), and a monitoring user with
    PROCESS alone."""
    tag = uuid.uuid4().hex[:6]
    names = {"app": f"app_{tag}", "orders": f"orders_{tag}", "monitor": f"mon_{tag}"}
    mariadb.execute(f"CREATE DATABASE {names['orders']}")
    mariadb.execute(f"CREATE TABLE {names['orders']}.t (id int PRIMARY KEY) ENGINE=InnoDB")
    mariadb.create_user(names["app"], "pw", f"ALL ON {names['orders']}.*")
    mariadb.create_user(names["monitor"], "pw", "PROCESS ON *.*")
    return names


def target(server, world, name="my", **extra):
    return {
        "name": name,
        "kind": "mysql",
        # PROCESS alone may not use the application's database: no default database.
        "url": server.url(user=world["monitor"], password="pw", database=""),
        # Short intervals, and timeouts a census on a loaded machine (just after a restart) meets.
        "probe": {"interval": 1, "timeout": 1},
        "census": {
            "interval": 1,
            "timeout": 1,
            "users": [world["app"]],
            "databases": [world["orders"]],
            "applications": ["web"],
        },
        **extra,
    }


@pytest.fixture
def clients(mariadb):
    opened = Sessions(mariadb)
    yield opened
    opened.close()


def census_of(settings):
    (only,) = settings.targets
    database = Database.from_target(only)
    try:
        pools = {"web": "web", "poolwatch-my": "my"}
        return {(n, labels): v for n, labels, v in mysql_census.census(only, database.engine, pools)()}
    finally:
        database.dispose()


def test_census_counts_sessions_by_state_with_process_alone_and_performance_schema_off(
    mariadb, world, clients
):
    app, orders = world["app"], world["orders"]
    clients.open(app, orders)
    clients.open(app, orders)
    clients.open(app, orders, "idle in transaction")
    busy = clients.open(app, orders)

    def sleep() -> None:
        with contextlib.suppress(pymysql.err.OperationalError):  # ended by KILL QUERY below
            busy.cursor().execute("SELECT SLEEP(60)")

    sleeper = threading.Thread(target=sleep)
    sleeper.start()
    try:
        wait_for(
            lambda: any(
                r[0] == "Query"
                for r in mariadb.execute(
                    "SELECT COMMAND FROM information_schema.PROCESSLIST WHERE USER = %s", (app,)
                )
            ),
            what="the sleeper's query",
        )
        got = census_of(validate({"targets": [target(mariadb, world)]}))
    finally:
        mariadb.execute(f"KILL QUERY {busy.thread_id()}")  # SLEEP returns at once
        sleeper.join()
    # Without performance_schema the server knows no program names: they fold into "".
    assert got["server_connections", ("idle", orders, app, "")] == 2
    assert got["server_connections", ("idle in transaction", orders, app, "")] == 1
    assert got["server_connections", ("active", orders, app, "")] == 1
    assert got["server_max_connections", ()] == mariadb.max_connections
    assert got["server_oldest_transaction_seconds", ()] >= 0
    assert got["server_oldest_seconds", ("idle in transaction",)] >= 0
    # System threads are not sessions; the census's own connection is (as in PostgreSQL).
    assert not [k for k in got if k[0] == "server_connections" and "system user" in k[1]]


def test_program_names_from_connection_attributes_name_pools(mariadb_factory):
    server = mariadb_factory(performance_schema=True)
    world = {"app": "app", "orders": "orders", "monitor": "monitor"}
    server.execute("CREATE DATABASE orders")
    server.execute("CREATE TABLE orders.t (id int PRIMARY KEY) ENGINE=InnoDB")
    server.create_user("app", "pw", "ALL ON orders.*")
    server.create_user("monitor", "pw", "PROCESS ON *.*", "SELECT ON performance_schema.*")
    web = Sessions(server)
    try:
        web.open("app", "orders", program_name="web")
        web.open("app", "orders", program_name="web")
        web.open("app", "orders", program_name="batch")
        got = census_of(validate({"targets": [target(server, world)]}))
    finally:
        web.close()
    assert got["server_connections", ("idle", "orders", "app", "web")] == 2
    assert got["server_connections", ("idle", "orders", "app", "")] == 1
    assert got["server_pool_connections", ("web", "idle")] == 2
    # poolwatch's own pool names itself (program_name): the census's session counts as pool "my".
    assert got["server_pool_connections", ("my", "active")] == 1


def test_daemon_watches_a_mysql_target_through_a_shared_pool(mariadb, world, clients):
    clients.open(world["app"], world["orders"], "idle in transaction")
    with running_daemon({"targets": [target(mariadb, world, pool={"size": 2, "min_idle": 1})]}) as daemon:
        wait_for(lambda: metric(daemon, "poolwatch_up", target="my") == 1, what="up")
        wait_for(
            lambda: (
                (found(scrape(daemon), "poolwatch_server_oldest_transaction_seconds", target="my") or 0) > 0
            ),
            what="the open transaction in the census",
        )
        samples = scrape(daemon)
        assert value(samples, "poolwatch_target_info", target="my", kind="mysql") == 1
        assert value(samples, "poolwatch_pool_max_connections", pool="my") == 2 + 10
        database = daemon.runtime("my").database
        assert database is not None
        with database.session_scope() as session:
            assert session.connection().exec_driver_sql("SELECT 1").scalar() == 1


def test_connect_errors_by_reason(mariadb, mariadb_factory, world):
    wrong = validate(
        {"targets": [target(mariadb, world) | {"url": mariadb.url(user=world["app"], password="x")}]}
    )
    database = Database.from_target(wrong.targets[0])
    with pytest.raises(AuthenticationFailedError) as auth, database.session_scope() as session:
        session.connection()
    assert auth.value.reason == "auth"
    database.dispose()
    small = mariadb_factory(max_connections=10)  # MariaDB's smallest
    small.create_user("app", "pw", "USAGE ON *.*")
    held = [small.connect("app", "pw") for _ in range(10)]
    full = Database.from_url(small.url(user="app", password="pw", database=""), name="full")
    try:
        with pytest.raises(DatabaseUnavailableError) as crowded, full.session_scope() as session:
            session.connection()
        assert crowded.value.reason == "too_many_connections"
    finally:
        full.dispose()
        for connection in held:
            connection.close()
    small.stop()
    gone = Database.from_url(small.url(user="app", password="pw", database=""), name="gone")
    with pytest.raises(DatabaseUnavailableError) as refused, gone.session_scope() as session:
        session.connection()
    assert refused.value.reason == "refused"
    gone.dispose()


@pytest.mark.destructive
def test_a_restart_takes_the_target_down_and_back_up(mariadb_factory):
    server = mariadb_factory()
    world = {"app": "app", "orders": "orders", "monitor": "monitor"}
    server.execute("CREATE DATABASE orders")
    server.create_user("monitor", "pw", "PROCESS ON *.*")
    config = {"targets": [target(server, world, pool={"min_idle": 1, "housekeeping_interval": 0.5})]}
    with running_daemon(config, metrics=Metrics(CollectorRegistry())) as daemon:
        wait_for(lambda: metric(daemon, "poolwatch_up", target="my") == 1, what="up")
        server.kill()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="my") == 0, what="down")
        # Refused, as a rule; on a loaded machine the probe may time out first (its timeout is short).
        failures = [
            metric(daemon, "poolwatch_probe_failures_total", target="my", reason=reason)
            for reason in ("refused", "reset", "timeout")
        ]
        assert sum(failures) >= 1
        server.start()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="my") == 1, timeout=30, what="up again")
        wait_for(
            lambda: (found(scrape(daemon), "poolwatch_server_max_connections", target="my") or 0) > 0,
            timeout=30,
            what="the census after the restart",
        )
