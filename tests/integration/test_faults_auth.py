"""A wrong password: counted as an auth failure, and the probe backs off (2x, 4x ... its interval, up
to ``auth_backoff_max``) instead of logging in every interval. Attempts are counted at a TCP proxy in
front of the real server: every login attempt is one new connection."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from tests.daemonkit import Scraper, running_daemon, scrape, value, wait_for
from tests.tcpproxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

INTERVAL = 0.2
BACKOFF_MAX = 1.6
WATCH = 6.0
PROBE = {"interval": INTERVAL, "timeout": INTERVAL, "auth_backoff_max": BACKOFF_MAX}


def _watch_attempts(proxy: TcpProxy, target: dict[str, object], name: str) -> None:
    target = {**target, "name": name, "probe": PROBE}
    with running_daemon({"targets": [target]}) as daemon, Scraper(f"{daemon.base_url}/metrics") as scraper:
        wait_for(lambda: proxy.accepted >= 1, 5, "first attempt")
        started = time.monotonic()
        time.sleep(WATCH / 2)
        halfway = proxy.accepted
        time.sleep(WATCH / 2)
        attempts = proxy.accepted
        elapsed = time.monotonic() - started
        samples = scrape(daemon)
    scraper.assert_served()

    # Without back-off: one attempt per interval, ~30 in 6 s. With it: 0, .2, .6, 1.4, 3.0, then
    # every 1.6 s: about 7.
    no_backoff = elapsed / INTERVAL
    assert attempts <= no_backoff / 3, f"{attempts} login attempts in {elapsed:.1f}s: no back-off"
    # Capped: it keeps trying at the cap (a fixed password is noticed within auth_backoff_max).
    assert attempts - halfway >= int(WATCH / 2 / BACKOFF_MAX) - 1 >= 0
    assert attempts - halfway >= 1
    assert value(samples, "poolwatch_probe_backoff_seconds", target=name) == BACKOFF_MAX
    assert value(samples, "poolwatch_up", target=name) == 0
    auth = value(samples, "poolwatch_probe_failures_total", target=name, reason="auth")
    assert auth >= attempts - 1, "every attempt is counted as an auth failure"
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
    target = {"name": name, "kind": "postgres",
              "url": f"postgresql+psycopg2://rotated_user:new-password@{pg.host}:{pg.port}/postgres",
              "probe": PROBE}  # fmt: skip
    with running_daemon({"targets": [target]}) as daemon:
        wait_for(
            lambda: value(scrape(daemon), "poolwatch_probe_backoff_seconds", target=name) == BACKOFF_MAX,
            10, "backing off at the cap",
        )  # fmt: skip
        pg.execute("ALTER ROLE rotated_user PASSWORD 'new-password'")
        took = wait_for(lambda: value(scrape(daemon), "poolwatch_up", target=name) == 1, 5, "up")
        assert took <= BACKOFF_MAX + 1.5
        assert value(scrape(daemon), "poolwatch_probe_backoff_seconds", target=name) == 0
