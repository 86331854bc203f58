"""A wrong password: counted as an auth failure, and the probe backs off (2x, 4x ... its interval, up
to ``auth_backoff_max``) instead of logging in every interval; meanwhile the target's census,
housekeeping and reaper defer their runs, so the probe's spaced attempts are the only logins. Attempts
are counted at a TCP proxy in front of the real server: every login attempt is one new connection."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from poolwatch.reaper.job import ReaperJob
from poolwatch.reaper.postgres import PostgresReaper
from tests.daemonkit import Scraper, metric, running_daemon, scrape, value, wait_for
from tests.tcpproxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import Callable

    from poolwatch.daemon import Daemon
    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

INTERVAL = 0.2
BACKOFF_MAX = 1.6
WATCH = 6.0
PROBE = {"interval": INTERVAL, "timeout": INTERVAL, "auth_backoff_max": BACKOFF_MAX}
# The target's other jobs at the probe's interval: without the shared back-off each of them would
# log in five times a second (housekeeping refills the pool to min_idle).
OTHERS: dict[str, dict[str, object]] = {
    "pool": {"min_idle": 1, "housekeeping_interval": INTERVAL},
    "census": {"interval": INTERVAL, "timeout": INTERVAL},
    "reaper": {
        "enabled": True,
        "interval": INTERVAL,
        "timeout": INTERVAL,
        "idle_timeout": 3600,
        "applications": ["nobody-*"],
    },
}
DEFERRED = ("census", "housekeeping", "reaper")


def _watch_attempts(proxy: TcpProxy, target: dict[str, object], name: str) -> None:
    target = {**target, "name": name, "probe": PROBE, **OTHERS}
    with running_daemon({"targets": [target]}) as daemon, Scraper(f"{daemon.base_url}/metrics") as scraper:
        wait_for(lambda: proxy.accepted >= 1, 5, "first attempt")
        started = time.monotonic()
        time.sleep(WATCH / 2)
        # Metrics first, then the proxy, at halfway; the other way round at the end: a probe attempt
        # under way at either moment can then only make the other jobs' count look smaller, by one.
        at_half = scrape(daemon)
        halfway = proxy.accepted
        time.sleep(WATCH / 2)
        attempts = proxy.accepted
        elapsed = time.monotonic() - started
        samples = scrape(daemon)
    scraper.assert_served()

    # Backing off at the cap by halfway: every connection since then is one of the probe's attempts.
    probe_logins = value(samples, "poolwatch_probe_failures_total", target=name, reason="auth") - value(
        at_half, "poolwatch_probe_failures_total", target=name, reason="auth"
    )
    others = attempts - halfway - probe_logins
    assert others <= 1, f"{others} logins by the census, housekeeping or reaper while the probe backed off"
    for task in DEFERRED:
        labels = {"task": task, "target": name}
        deferred = value(samples, "poolwatch_job_skipped_total", **labels) - value(
            at_half, "poolwatch_job_skipped_total", **labels
        )
        assert deferred >= 3, f"{task}: {deferred} runs deferred in {WATCH / 2:g}s"
        failed = value(samples, "poolwatch_job_failures_total", **labels)
        assert failed == value(at_half, "poolwatch_job_failures_total", **labels), f"{task} ran"

    # Without back-off: one attempt per interval, ~30 in 6 s. With it: 0, .2, .6, 1.4, 3.0, then
    # every 1.6 s: about 7.
    no_backoff = elapsed / INTERVAL
    auth = value(samples, "poolwatch_probe_failures_total", target=name, reason="auth")
    assert auth <= no_backoff / 3, f"{auth} probe logins in {elapsed:.1f}s: no back-off"
    # The other jobs log in only until the probe's second failure starts the back-off: a run or two
    # each (without the shared back-off, ~30 each).
    assert attempts - auth <= 4 * len(DEFERRED), f"{attempts - auth} logins by other jobs"
    # Capped: it keeps trying at the cap (a fixed password is noticed within auth_backoff_max).
    assert attempts - halfway >= int(WATCH / 2 / BACKOFF_MAX) - 1 >= 0
    assert attempts - halfway >= 1
    assert value(samples, "poolwatch_probe_backoff_seconds", target=name) == BACKOFF_MAX
    assert value(samples, "poolwatch_up", target=name) == 0
    for reason in ("refused", "timeout", "dns", "other"):
        assert value(samples, "poolwatch_probe_failures_total", target=name, reason=reason) == 0
    assert value(samples, "poolwatch_job_skipped_total", task="probe", target=name) >= 10


def test_wrong_postgres_password_backs_off(pg: PostgresServer) -> None:
    pg.create_role("backoff_user", "right-password")
    with TcpProxy((pg.host, pg.port)) as proxy:
        url = f"postgresql+psycopg2://backoff_user:wrong-password@{proxy.address}/postgres"
        _watch_attempts(proxy, {"kind": "postgres", "url": url}, "pg_wrong_password")


@pytest.mark.destructive
def test_wrong_redis_password_backs_off(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(password="right-password")
    with TcpProxy((server.host, server.port)) as proxy:
        url = f"redis://:wrong-password@{proxy.address}/0"
        _watch_attempts(proxy, {"kind": "redis", "url": url}, "redis_wrong_password")


def test_backoff_ends_when_the_login_works_again(pg: PostgresServer) -> None:
    pg.create_role("rotated_user", "old-password")
    name = "rotated"
    target = {
        "name": name,
        "kind": "postgres",
        "url": f"postgresql+psycopg2://rotated_user:new-password@{pg.host}:{pg.port}/postgres",
        "probe": PROBE,
        **OTHERS,
    }
    with running_daemon({"targets": [target]}) as daemon:
        wait_for(
            lambda: value(scrape(daemon), "poolwatch_probe_backoff_seconds", target=name) == BACKOFF_MAX,
            10,
            "backing off at the cap",
        )
        before = {task: _last_success(daemon, task, name) for task in DEFERRED}
        assert before["census"] == before["reaper"] == 0  # (a failed refill does not fail housekeeping)
        pg.execute("ALTER ROLE rotated_user PASSWORD 'new-password'")
        took = wait_for(lambda: value(scrape(daemon), "poolwatch_up", target=name) == 1, 5, "up")
        assert took <= BACKOFF_MAX + 1.5
        assert value(scrape(daemon), "poolwatch_probe_backoff_seconds", target=name) == 0
        # The other jobs log in and work again from their next run on.
        for task in DEFERRED:

            def ran_again(task: str = task) -> bool:
                return _last_success(daemon, task, name) > before[task]

            wait_for(ran_again, 10, f"{task} ran")
        assert metric(daemon, "poolwatch_reaper_leader", target=name) == 1


def test_a_reaper_deferred_by_the_backoff_gives_up_its_lease(pg: PostgresServer) -> None:
    """The reaper's lease session outlives a password change (it is logged in already) while the
    probe must log in again: the reaper stops with the others, and lets its lease go, so that a
    replica that can log in takes over; and the census series, now unknown, are withdrawn."""
    pg.create_role("lease_user", "right-password")
    name = "lease_changed_password"
    target = {
        "name": name,
        "kind": "postgres",
        "url": f"postgresql+psycopg2://lease_user:right-password@{pg.host}:{pg.port}/postgres",
        "probe": PROBE,
        **OTHERS,
    }
    with running_daemon({"targets": [target]}) as daemon:
        wait_for(lambda: metric(daemon, "poolwatch_reaper_leader", target=name) == 1, 10, "leader")
        wait_for(lambda: _census_series(daemon, name) > 0, 10, "a census")
        reaper = next(job for job in daemon.runtime(name).jobs if job.task == "reaper")
        assert isinstance(reaper, ReaperJob)
        assert isinstance(reaper.reaper, PostgresReaper)
        lease = reaper.reaper.lease
        lease_pid = lease.pid
        assert lease_pid is not None
        pg.execute("ALTER ROLE lease_user PASSWORD 'changed-password'")
        # Every session of the pool ends, the lease's stays: the probe has to log in again.
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE usename = 'lease_user' AND pid <> %s",
            (lease_pid,),
        )
        wait_for(lambda: metric(daemon, "poolwatch_probe_backoff_seconds", target=name) > 0, 10, "back-off")
        wait_for(lambda: metric(daemon, "poolwatch_reaper_leader", target=name) == 0, 5, "lease given up")
        assert pg.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (lease_pid,)) == [(0,)]
        assert _census_series(daemon, name) == 0
        pg.execute("ALTER ROLE lease_user PASSWORD 'right-password'")
        wait_for(lambda: metric(daemon, "poolwatch_reaper_leader", target=name) == 1, 10, "leader again")
        wait_for(lambda: _census_series(daemon, name) > 0, 10, "a census again")


@pytest.mark.destructive
def test_a_redis_reaper_deferred_by_the_backoff_stops_counting_on_its_lease(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """Releasing a Redis lease is a command, which may need a login: the reaper only stops counting
    on it (``reaper_leader`` 0) and lets the key lapse after its TTL."""
    server = redis_factory(password="right-password")
    name = "redis_changed_password"
    # A reaper run failing its login would drop the lease by itself: every 3 s, with the password
    # changed right after a run, the next one comes well after the probe's back-off has started.
    reaper = {**OTHERS["reaper"], "interval": 3, "timeout": 1}
    target = {"name": name, "kind": "redis", "url": server.url(), "probe": PROBE, **OTHERS, "reaper": reaper}
    with running_daemon({"targets": [target]}) as daemon:
        wait_for(lambda: metric(daemon, "poolwatch_reaper_leader", target=name) == 1, 10, "leader")
        first = _last_success(daemon, "reaper", name)
        wait_for(lambda: _last_success(daemon, "reaper", name) > first, 10, "a reaper run")
        admin = server.client()
        admin.config_set("requirepass", "changed-password")
        admin.client_kill_filter(_type="normal", skipme=True)  # logged-in clients stay logged in
        wait_for(lambda: metric(daemon, "poolwatch_probe_backoff_seconds", target=name) > 0, 10, "back-off")
        wait_for(lambda: metric(daemon, "poolwatch_reaper_leader", target=name) == 0, 5, "lease let go")
        admin.config_set("requirepass", "right-password")
        # Again once the key has lapsed (its TTL: 2 x 3 + 1 s).
        wait_for(lambda: metric(daemon, "poolwatch_reaper_leader", target=name) == 1, 30, "leader again")


def _census_series(daemon: Daemon, name: str) -> int:
    return sum(
        1
        for (sample, labels) in scrape(daemon)
        if sample == "poolwatch_server_connections" and ("target", name) in labels
    )


def _last_success(daemon: Daemon, task: str, name: str) -> float:
    return metric(daemon, "poolwatch_job_last_success_timestamp_seconds", task=task, target=name)
