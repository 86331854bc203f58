"""Census against real servers: counts by state and bounded labels, pool matching, limits, ages."""

from __future__ import annotations

import uuid

import psycopg2
import pytest
import redis

from poolwatch.config import validate
from poolwatch.daemon import build_target
from poolwatch.jobs import BoundedCall, run_job
from poolwatch.metrics import Metrics
from tests.idle import wait_pg_idle, wait_redis_idle

pytestmark = pytest.mark.integration


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels`` (None when there is none)."""
    found = [
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == f"poolwatch_{name}" and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, f"{name}{labels}: {len(found)} samples match"
    return found[0] if found else None


def present(metrics: Metrics, name: str, **labels: str) -> float:
    """The sample's value; the sample must exist."""
    sample = value(metrics, name, **labels)
    assert sample is not None, f"no poolwatch_{name} sample with {labels}"
    return sample


def census_once(runtime, metrics) -> None:
    (job,) = [j for j in runtime.jobs if j.task == "census"]
    outcome = run_job(job, BoundedCall("census-test"))
    assert outcome.ok, outcome.error
    job.record(outcome)


@pytest.fixture
def app_sessions(pg):
    """Opens sessions with a chosen application_name and state; closes them at the end."""
    opened: list[psycopg2.extensions.connection] = []

    def open_session(application: str, state: str = "idle", user: str | None = None, password=None):
        connection = psycopg2.connect(pg.dsn(user=user, password=password), application_name=application)
        opened.append(connection)
        cursor = connection.cursor()
        if state == "idle in transaction":
            cursor.execute("SELECT 1")  # psycopg2 opened a transaction and leaves it open
        else:
            connection.autocommit = True
            cursor.execute("SELECT 1")
        return connection

    yield open_session
    for connection in opened:
        connection.close()


def test_postgres_census_counts_sessions_by_state_and_bounded_labels(pg, app_sessions):
    app = f"census-{uuid.uuid4().hex[:8]}"
    settings = validate(
        {
            "targets": [
                {
                    "name": "pgc",
                    "kind": "postgres",
                    "url": pg.url(),
                    "census": {
                        "interval": 1,
                        "timeout": 1,
                        "applications": [app, "other"],
                        "idle_thresholds": [0.5, 3600],
                    },
                }
            ],
        }
    )
    idle = [app_sessions(app) for _ in range(3)]
    in_transaction = app_sessions(app, "idle in transaction")
    idle.append(app_sessions("some-request-id-1234"))  # not configured: folded into the empty value
    idle.append(app_sessions("other"))  # configured, and named like a fold value could be: its own
    metrics = Metrics()
    runtime = build_target(settings.targets[0], metrics)
    try:
        # Past the 0.5 s threshold, and the 0.9 s the ages below are checked against.
        wait_pg_idle(pg, [c.info.backend_pid for c in idle], 0.9)
        wait_pg_idle(pg, [in_transaction.info.backend_pid], 0.9, states=("idle in transaction",))
        census_once(runtime, metrics)
        labels = {"target": "pgc", "database": "postgres", "user": "postgres"}
        assert value(metrics, "server_connections", state="idle", application=app, **labels) == 3
        assert (
            value(metrics, "server_connections", state="idle in transaction", application=app, **labels) == 1
        )
        assert present(metrics, "server_connections", state="idle", application="", **labels) >= 1
        assert value(metrics, "server_connections", state="idle", application="other", **labels) == 1
        assert (
            value(metrics, "server_connections", state="idle", application="some-request-id-1234", **labels)
            is None
        )
        # a configured application is also a pool
        assert value(metrics, "server_pool_connections", target="pgc", pool=app, state="idle") == 3
        assert value(metrics, "server_pool_connections", target="pgc", pool=app, state="active") == 0
        limit = pg.execute(
            "SELECT current_setting('max_connections')::int - "
            "current_setting('superuser_reserved_connections')::int"
        )[0][0]
        assert value(metrics, "server_max_connections", target="pgc") == limit
        # The census names its server as the target's pools do: host:port/database, no credentials.
        server = f"{pg.host}:{pg.port}/postgres"
        assert value(metrics, "server_max_connections", target="pgc", server=server) == limit
        clients = len(pg.backends()) + 1  # the census connection itself
        ratio = value(metrics, "server_connections_used_ratio", target="pgc")
        assert ratio == pytest.approx(clients / limit, abs=3 / limit)
        assert present(metrics, "server_oldest_seconds", target="pgc", state="idle") >= 0.9
        assert present(metrics, "server_oldest_seconds", target="pgc", state="idle in transaction") >= 0.9
        assert present(metrics, "server_oldest_transaction_seconds", target="pgc") >= 0.9
        assert present(metrics, "server_idle_connections", target="pgc", idle_over="0.5") >= 4
        assert value(metrics, "server_idle_connections", target="pgc", idle_over="3600") == 0
    finally:
        runtime.close()


def test_daemon_pool_sessions_are_counted_under_the_target_name(pg):
    settings = validate({"targets": [{"name": "own", "kind": "postgres", "url": pg.url()}]})
    metrics = Metrics()
    runtime = build_target(settings.targets[0], metrics)
    try:
        census_once(runtime, metrics)
        # the census used the target's pool: that connection is poolwatch-own's and was active
        assert value(metrics, "server_pool_connections", target="own", pool="own", state="active") == 1
        census_once(runtime, metrics)
        assert value(metrics, "server_pool_connections", target="own", pool="own", state="active") == 1
    finally:
        runtime.close()


@pytest.mark.destructive
def test_a_failed_census_withdraws_the_series(pg_factory):
    server = pg_factory()
    settings = validate(
        {
            "targets": [
                {
                    "name": "gone",
                    "kind": "postgres",
                    "url": server.url(),
                    "census": {"interval": 1, "timeout": 1},
                }
            ]
        }
    )
    metrics = Metrics()
    runtime = build_target(settings.targets[0], metrics)
    try:
        census_once(runtime, metrics)
        assert value(metrics, "server_max_connections", target="gone") is not None
        server.stop()
        (job,) = [j for j in runtime.jobs if j.task == "census"]
        outcome = run_job(job, BoundedCall("census-test"))
        assert not outcome.ok
        job.record(outcome)
        assert value(metrics, "server_max_connections", target="gone") is None
    finally:
        runtime.close()


def test_redis_census_counts_clients_and_idle_thresholds(redis_server):
    name = f"cache-{uuid.uuid4().hex[:6]}"
    settings = validate(
        {
            "targets": [
                {
                    "name": "rc",
                    "kind": "redis",
                    "url": redis_server.url(),
                    "census": {
                        "interval": 1,
                        "timeout": 1,
                        "applications": [name],
                        "idle_thresholds": [1, 3600],
                    },
                }
            ],
        }
    )
    clients = []
    for _ in range(3):
        client = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
        client.client_setname(name)
        clients.append(client)
    ids = [int(client.client_id()) for client in clients]
    subscriber = redis.Redis(
        host=redis_server.host,
        port=redis_server.port,
        password=redis_server.password,
        client_name=f"{name}-sub",  # not configured: folded, and found by its name below
    )
    pubsub = subscriber.pubsub()
    pubsub.subscribe("news")
    ids += [int(c["id"]) for c in redis_server.client().client_list() if c["name"] == f"{name}-sub"]
    metrics = Metrics()
    runtime = build_target(settings.targets[0], metrics)
    try:
        wait_redis_idle(redis_server, ids, 2)  # over the 1 s threshold (whole seconds)
        census_once(runtime, metrics)
        labels = {"target": "rc", "database": "", "user": ""}
        assert value(metrics, "server_connections", state="connected", application=name, **labels) == 3
        assert value(metrics, "server_connections", state="pubsub", application="", **labels) == 1
        assert value(metrics, "server_pool_connections", target="rc", pool=name, state="connected") == 3
        assert value(metrics, "server_max_connections", target="rc") == 10000
        assert present(metrics, "server_idle_connections", target="rc", idle_over="1") >= 4
        assert value(metrics, "server_idle_connections", target="rc", idle_over="3600") == 0
        assert present(metrics, "server_oldest_seconds", target="rc", state="connected") >= 2
    finally:
        runtime.close()
        pubsub.close()
        subscriber.close()
        for client in clients:
            client.close()
