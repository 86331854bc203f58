"""The status page in a real browser: Debian's Chromium, headless, driven by selenium through
chromium-driver, against a real daemon watching a down PostgreSQL target, an exhausted one (the test
holds every connection of its pool), one with a leaked connection and reaper candidates, and a
healthy Redis. The page must list them worst first, log no console error (CSP violations included),
refresh itself with new values, and it is saved as the documentation's screenshot."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from poolwatch.history import History
from tests.daemonkit import running_daemon, wait_for
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Connection, Engine

    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

# The documentation's picture is rewritten only when asked (POOLWATCH_UPDATE_SCREENSHOT=1), so a
# test run leaves the checkout as it found it; otherwise the screenshot goes to the test's tmp_path.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "status-page.png"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium, "scripts/test installs chromium"
    assert driver_path, "scripts/test installs chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


READ_CARDS = """
return [...document.querySelectorAll("main > article")].map(card => ({
  target: card.dataset.target, health: card.dataset.health, text: card.innerText,
  kinds: [...card.querySelectorAll(".problems li")].map(li => li.dataset.kind)}));
"""
READ_TIMEOUTS = 'return document.querySelector("[data-target=orders] [data-field=timeouts]").textContent'


def _hold(engine: Engine, count: int) -> list[Connection]:
    """Check ``count`` connections out of the daemon's own pool (its probe may hold one briefly)."""
    held: list[Connection] = []
    deadline = time.monotonic() + 20
    while len(held) < count:
        assert time.monotonic() < deadline, "could not take the pool's connections"
        with contextlib.suppress(PoolTimeoutError):
            held.append(engine.connect())
    return held


def _config(pg: PostgresServer, redis: RedisServer) -> dict[str, Any]:
    fast = {"probe": {"interval": 0.5, "timeout": 0.5}, "census": {"interval": 1, "timeout": 1}}
    return {
        "targets": [
            {"name": "cache", "kind": "redis", "url": redis.url(), **fast},
            {
                "name": "orders",
                "kind": "postgres",
                "url": pg.url(),
                "pool": {"size": 2, "max_overflow": 0, "timeout": 0.3},
                **fast,
            },
            {
                "name": "inventory",
                "kind": "postgres",
                "url": pg.url(),
                "pool": {"leak_threshold": 1, "housekeeping_interval": 0.5},
                "reaper": {
                    "enabled": True,
                    "interval": 1,
                    "timeout": 1,
                    "idle_timeout": 1,
                    "idle_in_transaction_timeout": 600,
                    "applications": ["report-*"],
                },
                **fast,
            },
            {
                "name": "billing",
                "kind": "postgres",
                "url": f"postgresql+psycopg2://billing@127.0.0.1:{free_port()}/billing",
                **fast,
            },
        ]
    }


def test_the_page_shows_targets_worst_first_without_console_errors_and_refreshes(
    pg: PostgresServer, redis_server: RedisServer, browser: Any, tmp_path: Path
) -> None:
    pg.execute("DROP ROLE IF EXISTS report_user")
    pg.create_role("report_user", "report-pw")
    # An ordinary role's idle session: what the dry-run reaper would terminate.
    idle = psycopg2.connect(pg.dsn("report_user", "report-pw"), application_name="report-job")
    history = lambda: History(window=120, step=1)  # noqa: E731 - short steps: a sparkline within the test
    with contextlib.closing(idle), running_daemon(_config(pg, redis_server), history=history) as daemon:
        inventory = daemon.runtime("inventory").database
        orders = daemon.runtime("orders").database
        assert inventory is not None
        assert orders is not None
        held = _hold(orders.engine, 2) + _hold(inventory.engine, 1)

        def worst_first() -> bool:
            doc = daemon.status()
            names = [t["name"] for t in doc["targets"]]
            inventory_doc = next(t for t in doc["targets"] if t["name"] == "inventory")
            reaper = inventory_doc["reaper"]
            return (
                names == ["billing", "orders", "inventory", "cache"]
                and [t["health"] for t in doc["targets"]] == ["critical", "critical", "warning", "ok"]
                and reaper is not None
                and reaper["candidates_total"] >= 1
                and len(inventory_doc["trend"]["at"]) >= 5
            )

        try:
            wait_for(worst_first, 30, "billing down, orders exhausted, inventory leaking, cache ok")
            browser.get(f"{daemon.base_url}/?refresh=1")
            # Read in one script call: the page replaces its content every second.
            cards = browser.execute_script(READ_CARDS)
            assert [c["target"] for c in cards] == ["billing", "orders", "inventory", "cache"]
            assert [c["health"] for c in cards] == ["critical", "critical", "warning", "ok"]
            assert cards[0]["kinds"][0] == "down"
            assert cards[1]["kinds"][0] == "exhausted"
            assert cards[2]["kinds"] == ["leaks"]
            assert cards[3]["kinds"] == []
            assert "report-job" in cards[2]["text"], "the reaper's candidate is named"

            def timeouts() -> int:
                return int(browser.execute_script(READ_TIMEOUTS))

            first = timeouts()
            # The script replaces the page's content in place (no navigation): new values appear.
            wait_for(lambda: timeouts() > first, 20, "the page refreshed itself with more timeouts")
            assert browser.execute_script("return performance.getEntriesByType('navigation').length") == 1
            severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
            assert not severe, severe
            # The documentation's picture: with some history behind the sparklines, whole page.
            wait_for(lambda: len(daemon.status()["targets"][-1]["trend"]["at"]) >= 25, 60, "25 s of history")
            browser.refresh()
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": int(height), "deviceScaleFactor": 1, "mobile": False},
            )
            update = os.environ.get("POOLWATCH_UPDATE_SCREENSHOT") == "1"
            screenshot = DOCS_SCREENSHOT if update else tmp_path / "status-page.png"
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(screenshot))
            assert screenshot.stat().st_size > 10_000
        finally:
            for connection in held:
                connection.close()
    pg.execute("DROP ROLE IF EXISTS report_user")
