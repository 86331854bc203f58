"""Network faults between poolwatch and its targets, made by a TCP proxy the tests own: a target that
accepts and never answers, one that answers slowly, connections cut mid-query, a host name that does
not resolve. Probes end on schedule, other targets' jobs are not delayed, /metrics keeps answering."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from poolwatch.errors import DatabaseUnavailableError
from tests.daemonkit import Scraper, metric, running_daemon, scrape, value, wait_for
from tests.tcpproxy import TcpProxy

if TYPE_CHECKING:
    from poolwatch.daemon import Daemon
    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

SLACK = 1.5


def _count(daemon: Daemon, target: str) -> float:
    return metric(daemon, "poolwatch_probe_duration_seconds_count", target=target)


def test_hung_and_slow_targets_time_out_on_schedule_without_delaying_others(
    pg: PostgresServer, redis_server: RedisServer
) -> None:
    timeout = 0.4
    with (
        TcpProxy(mode="blackhole") as hung_pg,
        TcpProxy(mode="blackhole") as hung_redis,
        TcpProxy((redis_server.host, redis_server.port), mode="slow", delay=0.25) as slow_redis,
    ):
        hung = {"interval": 0.5, "timeout": timeout}
        config = {
            "targets": [
                {
                    "name": "hung_pg",
                    "kind": "postgres",
                    "probe": hung,
                    "url": f"postgresql+psycopg2://postgres@{hung_pg.address}/postgres",
                },
                {
                    "name": "hung_redis",
                    "kind": "redis",
                    "probe": hung,
                    "url": f"redis://{hung_redis.address}/0",
                },
                # Slower than the probe timeout on connect (several round trips), well within it after.
                {
                    "name": "slow_redis",
                    "kind": "redis",
                    "probe": {"interval": 1, "timeout": 1},
                    "url": f"redis://{slow_redis.address}/0",
                },
                {
                    "name": "healthy",
                    "kind": "postgres",
                    "url": pg.url(),
                    "probe": {"interval": 0.25, "timeout": 0.25},
                },
            ]
        }
        with running_daemon(config) as daemon, Scraper(f"{daemon.base_url}/metrics") as scraper:
            wait_for(lambda: metric(daemon, "poolwatch_up", target="healthy") == 1, 10, "healthy up")
            before = _count(daemon, "healthy")
            started = time.monotonic()
            time.sleep(4)
            elapsed = time.monotonic() - started
            samples = scrape(daemon)
        scraper.assert_served()

    # The healthy target was probed on its own schedule (every 0.25 s) while three others hung.
    healthy_runs = value(samples, "poolwatch_probe_duration_seconds_count", target="healthy") - before
    assert healthy_runs >= 0.6 * elapsed / 0.25, f"{healthy_runs} probes in {elapsed:.1f}s"
    assert value(samples, "poolwatch_up", target="healthy") == 1
    for name in ("hung_pg", "hung_redis"):
        assert value(samples, "poolwatch_up", target=name) == 0
        timeouts = value(samples, "poolwatch_probe_failures_total", target=name, reason="timeout")
        assert timeouts >= 4, f"{name}: {timeouts} timed-out probes in ~4 s"
        runs = value(samples, "poolwatch_probe_duration_seconds_count", target=name)
        mean = value(samples, "poolwatch_probe_duration_seconds_sum", target=name) / runs
        # A probe of a hung target costs at most its timeout (plus thread scheduling), never more.
        assert mean <= timeout + 0.3, f"{name}: mean probe duration {mean:.2f}s"
        assert value(samples, "poolwatch_up", target=name) == 0
    assert value(samples, "poolwatch_up", target="slow_redis") == 1
    slow_runs = value(samples, "poolwatch_probe_duration_seconds_count", target="slow_redis")
    slow_sum = value(samples, "poolwatch_probe_duration_seconds_sum", target="slow_redis")
    assert slow_sum / slow_runs >= 0.25, "the slow target's latency is measured, not hidden"


def test_postgres_connection_cut_mid_query(pg: PostgresServer) -> None:
    with TcpProxy((pg.host, pg.port)) as proxy:
        url = pg.url().replace(f"{pg.host}:{pg.port}", proxy.address)
        target = {"name": "cut", "kind": "postgres", "url": url, "probe": {"interval": 0.5, "timeout": 0.5}}
        with (
            running_daemon({"targets": [target]}) as daemon,
            Scraper(f"{daemon.base_url}/metrics") as scraper,
        ):
            wait_for(lambda: metric(daemon, "poolwatch_up", target="cut") == 1, 10, "up at start")
            database = daemon.runtime("cut").database
            assert database is not None
            errors: list[BaseException] = []
            finished = threading.Event()

            def long_query() -> None:
                try:
                    with database.session_scope() as session:
                        session.execute(text("SELECT pg_sleep(30)"))
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    finished.set()

            thread = threading.Thread(target=long_query)
            thread.start()
            wait_for(lambda: proxy.accepted >= 2, 5, "the query's connection")
            running = (
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'"
            )
            wait_for(lambda: bool(pg.execute(running)), 5, "the query running on the server")
            cut_at = time.monotonic()
            assert proxy.cut() >= 1
            assert finished.wait(5), "the caller was not released when its connection was cut"
            released_after = time.monotonic() - cut_at
            thread.join()
            assert len(errors) == 1
            assert isinstance(errors[0], DatabaseUnavailableError), repr(errors[0])
            assert errors[0].reason in {"reset", "other"}
            # The proxy still forwards new connections: the daemon and callers recover by themselves.
            wait_for(lambda: metric(daemon, "poolwatch_up", target="cut") == 1, 0.5 + SLACK, "up again")
            for _ in range(5):
                with database.session_scope() as session:
                    assert session.execute(text("SELECT 1")).scalar() == 1
        scraper.assert_served()
    assert released_after < 5


def test_redis_connection_cut_mid_command(redis_server: RedisServer) -> None:
    with TcpProxy((redis_server.host, redis_server.port)) as proxy:
        target = {
            "name": "rcut",
            "kind": "redis",
            "url": f"redis://{proxy.address}/0",
            "probe": {"interval": 0.5, "timeout": 0.5},
        }
        with (
            running_daemon({"targets": [target]}) as daemon,
            Scraper(f"{daemon.base_url}/metrics") as scraper,
        ):
            wait_for(lambda: metric(daemon, "poolwatch_up", target="rcut") == 1, 10, "up at start")
            redis_db = daemon.runtime("rcut").redis
            assert redis_db is not None
            errors: list[BaseException] = []
            results: list[object] = []

            def blocking_pop() -> None:
                try:
                    # socket_timeout is the probe timeout (0.5 s); BLPOP's own must stay under it.
                    with redis_db.client_scope() as client:
                        results.append(client.blpop(["poolwatch-test-never-pushed"], timeout=0.4))
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=blocking_pop)
            thread.start()
            admin = redis_server.client()
            try:
                wait_for(
                    lambda: any(c["cmd"] == "blpop" for c in admin.client_list()), 5, "BLPOP on the server"
                )
            finally:
                admin.close()
            assert proxy.cut() >= 1
            thread.join(5)
            assert not thread.is_alive(), "the caller was not released when its connection was cut"
            # redis-py retries a command whose connection broke (its default Retry) on a new
            # connection; if it gives up, the caller sees a poolwatch error, never a redis-py one.
            assert results == [None] or (
                len(errors) == 1 and isinstance(errors[0], DatabaseUnavailableError)
            ), (results, errors)
            wait_for(lambda: metric(daemon, "poolwatch_up", target="rcut") == 1, 0.5 + SLACK, "up again")
            with redis_db.client_scope() as client:
                assert client.ping() is True
        scraper.assert_served()


def test_host_name_that_does_not_resolve() -> None:
    config = {
        "targets": [
            {
                "name": "nodns_pg",
                "kind": "postgres",
                "probe": {"interval": 0.5, "timeout": 0.5},
                "url": "postgresql+psycopg2://app@poolwatch-no-such-host.invalid:5432/app",
            },
            {
                "name": "nodns_redis",
                "kind": "redis",
                "probe": {"interval": 0.5, "timeout": 0.5},
                "url": "redis://poolwatch-no-such-host.invalid:6379/0",
            },
        ]
    }
    with running_daemon(config) as daemon, Scraper(f"{daemon.base_url}/metrics") as scraper:
        for name in ("nodns_pg", "nodns_redis"):

            def dns_failures_counted(name: str = name) -> bool:
                return metric(daemon, "poolwatch_probe_failures_total", target=name, reason="dns") >= 2

            wait_for(dns_failures_counted, 5, f"{name}: dns failures counted")
            assert metric(daemon, "poolwatch_up", target=name) == 0
        status = {t["name"]: t for t in daemon.status()["targets"]}
        assert "poolwatch-no-such-host.invalid" in status["nodns_pg"]["error"]
        assert "\n" not in status["nodns_pg"]["error"]
    scraper.assert_served()
