"""The Redis reaper against a real server: idle named clients go; everything else stays."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from prometheus_client import CollectorRegistry

from poolwatch.config import validate
from poolwatch.database import RedisDatabase
from poolwatch.metrics import Metrics
from poolwatch.reaper.audit import AuditLog
from poolwatch.reaper.job import build_redis_reaper
from tests.idle import wait_redis_idle

pytestmark = pytest.mark.integration


class Clients:
    def __init__(self, server) -> None:
        self.server = server
        self.opened: list[redis.Redis] = []

    def open(self, name: str | None) -> redis.Redis:
        client = redis.Redis(
            host=self.server.host,
            port=self.server.port,
            password=self.server.password,
            single_connection_client=True,
            client_name=name,
        )
        client.ping()
        self.opened.append(client)
        return client

    def ids(self) -> set[int]:
        return {int(c["id"]) for c in self.server.client().client_list()}

    def close(self) -> None:
        for client in self.opened:
            client.close()


@pytest.fixture
def clients(redis_server):
    opened = Clients(redis_server)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def audit_url(pg):
    name = f"raudit_{uuid.uuid4().hex[:6]}"
    pg.create_database(name)
    return pg.url(database=name)


def reaper(redis_server, prefix, audit_url, *, registry=None, **settings):
    target = {
        "name": "cache",
        "kind": "redis",
        "url": redis_server.url(),
        "pool": {"application_name": f"{prefix}-poolwatch"},  # matches the pattern; must survive
        "reaper": {
            "enabled": True,
            "interval": 1,
            "timeout": 1,
            "idle_timeout": 1,
            "applications": [f"{prefix}-*"],
            **settings,
        },
    }
    config = validate({"targets": [target], "audit": {"url": audit_url}})
    metrics = Metrics(registry or CollectorRegistry())
    database = RedisDatabase.from_target(config.targets[0])
    log = AuditLog(config.audit, metrics.reaper)
    job = build_redis_reaper(config.targets[0], database.client, log, metrics.reaper)
    return job, database, metrics


def client_id(client: redis.Redis) -> int:
    return int(client.client_id())


def test_idle_named_clients_are_killed_and_the_rest_survive(pg, redis_server, clients, audit_url):
    prefix = f"web{uuid.uuid4().hex[:6]}"
    victim = clients.open(f"{prefix}-1")
    other_name = clients.open("batch")
    unnamed = clients.open(None)
    busy = clients.open(f"{prefix}-busy")
    subscriber = redis.Redis(
        host=redis_server.host,
        port=redis_server.port,
        password=redis_server.password,
        client_name=f"{prefix}-sub",
    )
    pubsub = subscriber.pubsub()  # the only connection of this client: a subscriber
    pubsub.subscribe("news")
    ids = {
        name: client_id(c)
        for name, c in {"victim": victim, "other": other_name, "unnamed": unnamed, "busy": busy}.items()
    }
    # 3 s, not 1: the busy client, pinged every 0.2 s by a thread, must not look idle when that
    # thread gets no CPU for a second on a loaded machine.
    job, database, metrics = reaper(redis_server, prefix, audit_url, dry_run=False, idle_timeout=3)
    stop = threading.Event()

    def keep_busy():
        while not stop.is_set():
            busy.ping()
            time.sleep(0.2)

    pinger = threading.Thread(target=keep_busy)
    pinger.start()
    try:
        database.client.ping()  # poolwatch's own pooled connection, named like the victims
        wait_redis_idle(redis_server, [ids["victim"], ids["other"], ids["unnamed"]], 3)
        job.run()
        present = clients.ids()
        assert ids["victim"] not in present
        assert {ids["other"], ids["unnamed"], ids["busy"]} <= present
        subscribers = [c for c in redis_server.client().client_list() if c["name"] == f"{prefix}-sub"]
        assert len(subscribers) == 1
        own = [c for c in redis_server.client().client_list() if c["name"] == f"{prefix}-poolwatch"]
        assert own
        labels = {"target": "cache", "reason": "idle", "mode": "enforce"}
        assert metrics.registry.get_sample_value("poolwatch_reaper_terminated_total", labels) == 1
        assert metrics.registry.get_sample_value("poolwatch_reaper_leader", {"target": "cache"}) == 1
        rows = pg.execute(
            "SELECT pid, kind, mode, application FROM poolwatch_audit WHERE application = %s",
            (f"{prefix}-1",),
            dbname=audit_url.rsplit("/", 1)[1],
        )
        assert rows == [(ids["victim"], "redis", "enforce", f"{prefix}-1")]
    finally:
        stop.set()
        pinger.join()
        pubsub.close()
        job.close()
        database.close()


def test_dry_run_kills_nothing_and_counts_candidates(redis_server, clients, audit_url):
    prefix = f"dry{uuid.uuid4().hex[:6]}"
    idle = [clients.open(f"{prefix}-{i}") for i in range(3)]
    idle_ids = [client_id(c) for c in idle]
    job, database, metrics = reaper(redis_server, prefix, audit_url)
    try:
        wait_redis_idle(redis_server, idle_ids, 1)
        job.run()
        assert {client_id(c) for c in idle} <= clients.ids()
        labels = {"target": "cache", "reason": "idle", "mode": "dry_run"}
        assert metrics.registry.get_sample_value("poolwatch_reaper_terminated_total", labels) == 3
    finally:
        job.close()
        database.close()


def test_max_per_run_and_one_leader_among_replicas(redis_server, clients, audit_url):
    prefix = f"ha{uuid.uuid4().hex[:6]}"
    idle = [clients.open(f"{prefix}-{i}") for i in range(4)]
    ids = {client_id(c) for c in idle}
    replicas = [reaper(redis_server, prefix, audit_url, dry_run=False, max_per_run=3) for _ in range(2)]
    try:
        wait_redis_idle(redis_server, ids, 1)
        for job, _, _ in replicas:
            job.run()
        leaders = [
            m.registry.get_sample_value("poolwatch_reaper_leader", {"target": "cache"})
            for _, _, m in replicas
        ]
        assert sorted(leaders) == [0, 1]
        assert len(ids & clients.ids()) == 1  # three killed by the leader, the other replica idle
        for job, _, _ in replicas:
            job.run()
        assert not ids & clients.ids()
        killed = [
            m.registry.get_sample_value(
                "poolwatch_reaper_terminated_total", {"target": "cache", "reason": "idle", "mode": "enforce"}
            )
            for _, _, m in replicas
        ]
        assert sorted(killed) == [0, 4]
    finally:
        for job, database, _ in replicas:
            job.close()
            database.close()


@pytest.mark.destructive
def test_a_replica_that_cannot_reach_redis_is_not_leader(redis_factory, audit_url):
    server = redis_factory()
    job, database, metrics = reaper(server, "gone", audit_url)
    try:
        job.run()
        assert metrics.registry.get_sample_value("poolwatch_reaper_leader", {"target": "cache"}) == 1
        server.kill()
        with pytest.raises(Exception, match="cache"):
            job.run()
        assert metrics.registry.get_sample_value("poolwatch_reaper_leader", {"target": "cache"}) == 0
    finally:
        job.close()
        database.close()
