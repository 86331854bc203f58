"""The status document's parts without servers: the trend ring buffer, counter increases, the problem
rules and the worst-first order, the terminal rendering and the client's handling of credentials."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch.assess import KINDS, assess, duration, rank
from poolwatch.client_config import client_settings
from poolwatch.config import validate
from poolwatch.daemon import Daemon
from poolwatch.errors import ConfigError
from poolwatch.history import BYTES, SLOTS, History
from poolwatch.jobs import Outcome, TargetJob
from poolwatch.probe import ProbeResult
from poolwatch.scheduler import JobStats
from poolwatch.status import FRESH, Sources, Tracker, _increase
from poolwatch.statusclient import Remote, UnreachableError, fetch, split_credentials
from poolwatch.statustext import render as render_text
from tests.servers import free_port
from tests.statusdocs import NOW, document, target

if TYPE_CHECKING:
    from collections.abc import Mapping

    from poolwatch.status import TargetDoc

SETTINGS = validate({"targets": [{"name": "orders", "kind": "postgres", "url": "postgresql://u@db/orders"}]})
ORDERS = SETTINGS.targets[0]


def test_history_merges_samples_of_one_step_keeping_peaks_and_latest_totals() -> None:
    history = History(window=60, step=10)
    history.add_pool(100.0, used=3, pending=2, timeouts=5, leaks=1)
    history.add_pool(104.0, used=1, pending=0, timeouts=7, leaks=1)
    history.add_pool(111.0, used=2, pending=0, timeouts=7, leaks=2)
    trend = history.trend()
    assert trend.at == [104.0, 111.0]
    assert trend.used == [3.0, 2.0]
    assert trend.pending == [2.0, 0.0]
    assert trend.timeouts == [7.0, 7.0]
    assert trend.leaks == [1.0, 2.0]


def test_history_keeps_the_newest_rows_in_fixed_memory() -> None:
    history = History(window=50, step=10)  # 6 rows
    for second in range(0, 1000, 10):
        history.add_pool(float(second), used=second, pending=0, timeouts=0, leaks=0)
        history.add_sessions(float(second), sessions=second)
    trend = history.trend()
    assert trend.at == [940.0, 950.0, 960.0, 970.0, 980.0, 990.0]
    assert trend.sessions == trend.sessions_at
    assert all(len(column) == 6 for column in history._pool._columns)
    assert SLOTS == 91
    assert BYTES == 91 * 7 * 8


class _Housekeeping(TargetJob):
    """A job that does nothing: its outcomes are what the tracker sees."""

    task = "housekeeping"

    def run(self) -> None:
        pass

    def record(self, outcome: Outcome) -> None:
        pass


def _sources(tracker: Tracker, stats: Mapping[str, JobStats] | None = None) -> Sources:
    up = ProbeResult(True, NOW - 60, 0.001, "", "", NOW - 1, 0.0)
    return Sources(ORDERS, up, None, [], {} if stats is None else stats, [], tracker)


def test_a_targets_part_is_kept_from_one_job_outcome_to_the_next() -> None:
    tracker = Tracker(History())
    assert tracker.kept(ORDERS, NOW) is None
    doc = tracker.refresh(_sources(tracker), NOW)
    assert doc["up"] is True
    assert tracker.kept(ORDERS, NOW + 1) is doc
    reloaded = validate({"targets": [{"name": "orders", "kind": "postgres", "url": "postgresql://u@db/o"}]})
    assert tracker.kept(reloaded.targets[0], NOW + 1) is None, "made for the target before a reload"
    assert tracker.kept(ORDERS, NOW + FRESH) is None, "too old"
    tracker.observe(_Housekeeping("orders", interval=1, timeout=1), None, NOW + 2)
    assert tracker.kept(ORDERS, NOW + 2) is None, "an outcome came in since"
    doc = tracker.refresh(_sources(tracker), NOW + 2)
    tracker.history.add_pool(NOW + 3, used=1, pending=0, timeouts=0, leaks=0)
    assert tracker.kept(ORDERS, NOW + 3) is None, "a sample came in since"


def test_a_kept_part_is_made_again_once_the_pool_shows_other_numbers() -> None:
    """Between two outcomes a request reads the pool (never the server): a connection taken or given
    back, a caller waiting, shows on the next page."""
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    pool = poolwatch.instrument(engine, name="orders", registry=CollectorRegistry())
    tracker = Tracker(History())
    up = ProbeResult(True, NOW - 60, 0.001, "", "", NOW - 1, 0.0)
    sources = Sources(ORDERS, up, pool, [], {}, [], tracker)
    doc = tracker.refresh(sources, NOW)
    assert tracker.kept(ORDERS, NOW + 1, pool) is doc
    with engine.connect():
        assert tracker.kept(ORDERS, NOW + 1, pool) is None, "a connection was taken since"
        doc = tracker.refresh(sources, NOW + 1)
        assert doc["pool"] is not None
        assert doc["pool"]["used"] == 1
        assert tracker.kept(ORDERS, NOW + 1, pool) is doc
    assert tracker.kept(ORDERS, NOW + 2, pool) is None, "the connection came back since"
    engine.dispose()


def test_a_part_made_while_an_outcome_came_in_does_not_replace_the_newer_one() -> None:
    """A request makes the target's part while a job outcome comes in and makes its own: the
    outcome's part is the one kept."""
    tracker = Tracker(History())
    newer: list[TargetDoc] = []

    class OutcomeDuringTheRead(dict[str, JobStats]):
        def items(self) -> Any:
            tracker.observe(_Housekeeping("orders", interval=1, timeout=1), None, NOW)
            newer.append(tracker.refresh(_sources(tracker), NOW))
            return super().items()

    older = tracker.refresh(_sources(tracker, OutcomeDuringTheRead()), NOW)
    assert older is not newer[0]
    assert tracker.kept(ORDERS, NOW) is newer[0]


@pytest.mark.parametrize(
    ("at", "totals", "now_total", "expected"),
    [
        ([100.0, 200.0, 400.0], [1.0, 4.0, 6.0], 9, 5),  # from the last sample before the window
        ([250.0, 400.0], [4.0, 6.0], 9, 9),  # history younger than the window: from 0
        ([100.0, 250.0, 300.0], [5.0, 8.0, 2.0], 3, 6),  # restarted at 2: 3 + 2 + 1
        ([], [], 4, 4),
    ],
)
def test_increase_of_a_running_total(
    at: list[float], totals: list[float], now_total: int, expected: int
) -> None:
    assert _increase(at, totals, now_total, since=200.0) == expected


def _problems(**changes: Any) -> list[str]:
    return [p["kind"] for p in assess(target(**changes), ORDERS, NOW)]


def test_each_rule_names_its_problem() -> None:
    assert _problems() == []
    assert _problems(up=False, error="refused", reason="refused") == ["down"]
    assert _problems(up=False, error="pool exhausted", reason="pool_timeout") == ["exhausted"]
    assert _problems(pool={"used": 15, "pending": 3}) == ["exhausted"]
    assert _problems(pool={"used": 13}) == ["pool_busy"]
    assert _problems(pool={"timeouts_recent": 2}) == ["timeouts"]
    assert _problems(pool={"leaked": 1}) == ["leaks"]
    assert _problems(census={"used_ratio": 0.97, "sessions": 94}) == ["server_full"]
    old = {"oldest_seconds": {"idle in transaction": 120.0}}
    assert _problems(census=old) == ["idle_in_transaction"]


def test_idle_transactions_are_judged_by_the_reapers_limit_when_it_has_one() -> None:
    reaping = validate(
        {
            "targets": [
                {
                    "name": "orders",
                    "kind": "postgres",
                    "url": "postgresql://u@db/orders",
                    "reaper": {"enabled": True, "idle_in_transaction_timeout": 300, "applications": ["*"]},
                }
            ]
        }
    ).targets[0]
    doc = target(census={"oldest_seconds": {"idle in transaction": 120.0}})
    assert assess(doc, reaping, NOW) == []
    doc = target(census={"oldest_seconds": {"idle in transaction (aborted)": 1600.0}})
    assert [p["severity"] for p in assess(doc, reaping, NOW)] == ["critical"]


def test_failing_jobs_of_a_down_target_are_not_separate_problems() -> None:
    failing = [{**job, "failing_for": 3, "last_error": "refused"} for job in target()["jobs"]]
    assert _problems(jobs=failing) == ["job_failing", "job_failing"]  # census and reaper
    assert _problems(up=False, reason="refused", jobs=failing) == ["down"]


def test_targets_sort_worst_first_then_by_kind_then_by_name() -> None:
    targets = [
        target("a-ok"),
        target("b-leaks", pool={"leaked": 1}),
        target("c-busy", pool={"used": 13}),
        target("d-timeouts", pool={"timeouts_recent": 1}),
        target("e-down", up=False, reason="refused", error="refused"),
        target("f-unknown", up=None, checked_at=None),
        target("g-exhausted", up=False, reason="pool_timeout", error="exhausted"),
        target("h-down", up=False, reason="dns", error="no such host"),
    ]
    for t in targets:
        t["problems"] = assess(t, ORDERS, NOW)
    doc = document(*targets)
    assert [t["name"] for t in doc["targets"]] == [
        "e-down",
        "h-down",
        "g-exhausted",
        "d-timeouts",
        "b-leaks",
        "c-busy",
        "f-unknown",
        "a-ok",
    ]
    assert doc["counts"] == {"critical": 4, "warning": 2, "unknown": 1, "ok": 1}
    assert rank(doc["targets"][0]) < rank(doc["targets"][-1])
    assert KINDS.index("leaks") < KINDS.index("pool_busy")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.00095, "0.0s"),
        (0.26, "0.3s"),
        (4.2, "4.2s"),
        (42, "42s"),
        (62, "1m 02s"),
        (300, "5m"),
        (3600, "1h"),
        (93784, "1d 2h"),
    ],
)
def test_durations_read_short(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_terminal_text_is_worst_first_coloured_only_when_asked_and_strips_control_characters() -> None:
    hostile = target("orders", census={"oldest_idle_in_transaction": None})
    hostile["url"] = "postgresql://web@db/orders\x1b[2J"
    down = target("billing", up=False, reason="refused", error="refused")
    down["problems"] = assess(down, ORDERS, NOW)
    doc = document(hostile, down)
    plain = render_text(doc, url="http://127.0.0.1:18187")
    assert "\x1b" not in plain
    assert plain.index("CRITICAL billing") < plain.index("OK       orders")
    assert "down for 1h" in plain
    coloured = render_text(doc, url="http://127.0.0.1:18187", color=True)
    assert "\x1b[1;31mCRITICAL" in coloured
    assert "\x1b[2J" not in coloured


def test_credentials_in_a_url_are_taken_out_and_never_echoed() -> None:
    url, user, password = split_credentials("https://ops:s%40cret-pw@127.0.0.1:18187/")
    assert (url, user, password) == ("https://127.0.0.1:18187", "ops", "s@cret-pw")
    assert "s@cret-pw" not in repr(Remote(url, user=user, password=password))
    for bad in ("ftp://ops:s3cret-pw@host", "https://ops:s3cret-pw@host:port", "ops:s3cret-pw@host"):
        with pytest.raises(ConfigError) as caught:
            split_credentials(bad)
        assert "s3cret-pw" not in str(caught.value)
        assert "\n" not in str(caught.value)


def test_an_unreachable_daemon_is_one_line_without_the_password() -> None:
    url, user, password = split_credentials(f"http://ops:s3cret-pw@127.0.0.1:{free_port()}")
    with pytest.raises(UnreachableError) as caught:
        fetch(Remote(url, user=user, password=password), timeout=5)
    message = str(caught.value)
    assert message.startswith("cannot reach the daemon at http://127.0.0.1:")
    assert "s3cret-pw" not in message
    assert "ops" not in message


def test_the_client_finds_the_daemon_from_the_configuration(tmp_path: Any) -> None:
    config = tmp_path / "poolwatch.yaml"
    # The targets' password files are not read: they may be unreadable to whoever asks.
    config.write_text(
        "http:\n  listen: '0.0.0.0:19999'\n  tls: {cert_file: /etc/poolwatch/tls.crt, key_file: /k}\n"
        "targets:\n  - {name: a, kind: postgres, url: 'postgresql://u@db/a', password_file: /nonexistent}\n"
    )
    found = client_settings(str(config), environ={})
    assert found.base_url == "https://127.0.0.1:19999"
    assert found.cert_file == "/etc/poolwatch/tls.crt"
    assert found.color
    env = {"POOLWATCH_CONFIG": str(config), "POOLWATCH_LISTEN": "[::]:18000", "NO_COLOR": "1"}
    found = client_settings(
        None, environ={**env, "POOLWATCH_HTTP_USER": "ops", "POOLWATCH_HTTP_PASSWORD": "pw"}
    )
    assert found.base_url == "https://[::1]:18000"
    assert found.user == "ops"
    assert found.password is not None
    assert found.password.get_secret_value() == "pw"
    assert "pw" not in repr(found)
    assert not found.color
    assert client_settings(None, environ={}).base_url == "http://127.0.0.1:18187"
    assert client_settings(None, locate=False, environ=env).base_url == "http://127.0.0.1:18187"
    config.write_text("http: {listen: 'nowhere'}\n")
    with pytest.raises(ConfigError, match=r"^http\.listen: expected host:port"):
        client_settings(str(config), environ={})


def test_the_status_command_refuses_a_password_file_it_cannot_read(tmp_path: Any, capsys: Any) -> None:
    from poolwatch.cli import main

    assert main(["status", "--url", "http://127.0.0.1:1", "--password-file", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poolwatch: error: --password-file ")
    assert err.count("\n") == 1
    assert sys.stdout is not None


@pytest.mark.timeout(20)
def test_the_status_command_reads_a_bounded_password_file(capsys: Any) -> None:
    from poolwatch.cli import main

    # /dev/zero has no line end: an unbounded readline() never returns.
    assert main(["status", "--url", "http://127.0.0.1:1", "--password-file", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poolwatch: error: --password-file /dev/zero: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("url", "code"),
    [("http://ops:s3cret-pw@127.0.0.1:{port}", 1), ("http://ops:s3cret-pw@127.0.0.1:x", 2)],
)
def test_the_status_command_never_echoes_credentials_from_its_url(url: str, code: int, capsys: Any) -> None:
    from poolwatch.cli import main

    assert main(["status", "--url", url.format(port=free_port())]) == code
    captured = capsys.readouterr()
    assert captured.err.startswith("poolwatch: error: ")
    assert captured.err.count("\n") == 1
    assert "s3cret-pw" not in captured.err + captured.out


def test_job_outcomes_prepare_the_status_only_while_someone_asks_for_it() -> None:
    """A daemon whose jobs are not scheduled: outcomes are recorded as the scheduler records them."""
    url = f"postgresql://u@127.0.0.1:{free_port()}/orders"
    daemon = Daemon(
        validate(
            {"http": {"listen": "127.0.0.1:0"}, "targets": [{"name": "o", "kind": "postgres", "url": url}]}
        )
    )
    daemon.start()
    try:
        settings = daemon.runtime("o").settings
        probe = next(job for job in daemon.runtime("o").jobs if job.task == "probe")
        tracker = daemon._trackers["o"]
        daemon._scheduler._record(probe, Outcome(0.001, time.time(), None))
        assert tracker.kept(settings, time.time()) is None, "nobody asked: the outcome only took its sample"
        first = daemon.status()["targets"][0]
        assert first["up"] is True
        assert daemon.status()["targets"][0] is first, "kept between two outcomes"
        daemon._scheduler._record(probe, Outcome(0.001, time.time(), ConnectionRefusedError("refused")))
        kept = tracker.kept(settings, time.time())
        assert kept is not None, "made when the outcome was recorded"
        assert kept["up"] is False
        assert daemon.status()["targets"][0] is kept
    finally:
        daemon.stop()
        daemon._close()
