"""The daemon against real servers: probes, failures flipping poolwatch_up, isolation between targets,
graceful shutdown, reload, and the CLI's exit codes."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from poolwatch.config import validate
from tests.daemonkit import (
    DaemonProcess,
    clean_env,
    get,
    metric,
    poolwatch_command,
    running_daemon,
    scrape,
    value,
    wait_for,
)
from tests.servers import LOOPBACK, SilentServer, free_port

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

FAST = {"probe": {"interval": 0.3, "timeout": 0.3}}


def pg_target(server: PostgresServer, name: str = "orders", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "postgres", "url": server.url(), **FAST, **extra}


def redis_target(server: RedisServer, name: str = "cache", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "redis", "url": server.url(), **FAST, **extra}


def test_probes_report_every_kind_up(pg: PostgresServer, redis_server: RedisServer, tmp_path: Path) -> None:
    sqlite = {"name": "embedded", "kind": "sqlite", "url": f"sqlite:///{tmp_path}/x.db", **FAST}
    config = {"targets": [pg_target(pg), redis_target(redis_server), sqlite]}
    with running_daemon(config) as daemon:
        for name in ("orders", "cache", "embedded"):

            def up(n: str = name) -> bool:
                return metric(daemon, "poolwatch_up", target=n) == 1

            wait_for(up)
            assert metric(daemon, "poolwatch_probe_duration_seconds_count", target=name) >= 1
            assert (
                metric(daemon, "poolwatch_job_last_success_timestamp_seconds", task="probe", target=name) > 0
            )
            assert metric(daemon, "poolwatch_probe_failures_total", target=name, reason="refused") == 0
        status, body = get(daemon.base_url + "/status")
        assert status == 200
        assert [t["up"] for t in json.loads(body)["targets"]] == [True, True, True]


@pytest.mark.destructive
def test_stopping_postgres_flips_only_its_up_and_recovery_flips_it_back(
    pg_factory: Callable[[], PostgresServer], redis_server: RedisServer
) -> None:
    server = pg_factory()
    config = {"targets": [pg_target(server), redis_target(redis_server)]}
    with running_daemon(config) as daemon:
        wait_for(lambda: metric(daemon, "poolwatch_up", target="orders") == 1)
        server.stop()
        stopped = time.monotonic()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="orders") == 0, timeout=10)
        assert time.monotonic() - stopped < 5  # one interval (0.3 s) plus timeout, on a noisy machine
        assert metric(daemon, "poolwatch_up", target="cache") == 1
        assert metric(daemon, "poolwatch_probe_failures_total", target="orders", reason="refused") >= 1
        server.start()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="orders") == 1, timeout=10)
        assert metric(daemon, "poolwatch_up", target="cache") == 1


@pytest.mark.destructive
def test_stopping_redis_flips_only_its_up(
    pg: PostgresServer, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    with running_daemon({"targets": [pg_target(pg), redis_target(server)]}) as daemon:
        wait_for(lambda: metric(daemon, "poolwatch_up", target="cache") == 1)
        server.stop()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="cache") == 0, timeout=10)
        assert metric(daemon, "poolwatch_up", target="orders") == 1
        server.start()
        wait_for(lambda: metric(daemon, "poolwatch_up", target="cache") == 1, timeout=10)


def test_a_hanging_target_times_out_and_does_not_delay_the_others(
    pg: PostgresServer, silent: SilentServer
) -> None:
    hung = {
        "name": "hung",
        "kind": "postgres",
        "url": f"postgresql://u@{LOOPBACK}:{silent.port}/x",
        # libpq connect timeout far longer than the probe timeout: only our own deadline helps.
        "pool": {"connect_timeout": 60},
        "probe": {"interval": 0.5, "timeout": 0.4},
    }
    with running_daemon({"targets": [hung, pg_target(pg)]}) as daemon:
        wait_for(
            lambda: metric(daemon, "poolwatch_probe_failures_total", target="hung", reason="timeout") >= 2
        )
        assert metric(daemon, "poolwatch_up", target="hung") == 0

        # While "hung" hangs (its connect attempt lasts 60 s; later runs are skipped, not stacked
        # up), "orders" completes probe after probe: three more, while "hung" skips one more run.
        def progress() -> tuple[float, float]:
            samples = scrape(daemon)
            return (
                value(samples, "poolwatch_probe_duration_seconds_count", target="orders"),
                value(samples, "poolwatch_job_skipped_total", task="probe", target="hung"),
            )

        probed, skipped = progress()

        def moved_on() -> bool:
            now_probed, now_skipped = progress()
            return now_probed >= probed + 3 and now_skipped >= skipped + 1

        wait_for(moved_on, what="3 more probes of orders while hung still hangs")
        assert metric(daemon, "poolwatch_up", target="orders") == 1
        status, _ = get(daemon.base_url + "/metrics")
        assert status == 200


def test_sigterm_stops_within_a_few_seconds_even_with_a_hung_target(
    pg: PostgresServer, silent: SilentServer, tmp_path: Path
) -> None:
    hung = {
        "name": "hung",
        "kind": "postgres",
        "url": f"postgresql://u@{LOOPBACK}:{silent.port}/x",
        "pool": {"connect_timeout": 60},
        "probe": {"interval": 5, "timeout": 5},
    }
    config = tmp_path / "poolwatch.yaml"
    config.write_text(yaml.safe_dump({"targets": [hung, pg_target(pg)]}))
    with DaemonProcess(["--config", str(config)], clean_env()) as run:
        run.wait(lambda: 1 in run.up().values(), "a target up")
        started = time.monotonic()
        code = run.stop(timeout=15)
        elapsed = time.monotonic() - started
    assert code == 0, run.output()
    assert elapsed < 5, elapsed
    assert "poolwatch stopped" in run.output()
    assert "Traceback" not in run.output()


def test_embedded_default_needs_no_configuration(tmp_path: Path) -> None:
    env = clean_env(POOLWATCH_STATE_DIR=str(tmp_path))
    with DaemonProcess([], env, cwd=tmp_path) as run:
        first = run.lines[0]
        assert "no configuration given, monitoring the embedded SQLite database" in first
        assert str(tmp_path / "embedded.db") in first
        assert f"{run.url}/metrics" in first
        run.wait(lambda: 1 in run.up().values(), "a target up")
        assert run.stop() == 0


def test_sighup_reloads_targets_and_keeps_running_on_a_bad_file(
    pg: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "poolwatch.yaml"
    config.write_text(yaml.safe_dump({"targets": [pg_target(pg)]}))
    with DaemonProcess(["--config", str(config)], clean_env()) as run:
        run.wait(lambda: run.up().get("orders") == 1)
        config.write_text(yaml.safe_dump({"targets": [pg_target(pg), redis_target(redis_server)]}))
        run.process.send_signal(signal.SIGHUP)
        run.wait(lambda: run.up().get("cache") == 1)
        config.write_text("targets: [\n")
        run.process.send_signal(signal.SIGHUP)
        run.wait(lambda: "reload refused" in run.output())
        assert run.up() == {"orders": 1, "cache": 1}
        config.write_text(yaml.safe_dump({"targets": [redis_target(redis_server)]}))
        run.process.send_signal(signal.SIGHUP)
        run.wait(lambda: "orders" not in run.up())
        assert run.stop() == 0


def test_sighup_applies_log_settings_and_says_audit_settings_wait_for_a_restart(
    pg: PostgresServer, tmp_path: Path
) -> None:
    config = tmp_path / "poolwatch.yaml"
    config.write_text(yaml.safe_dump({"targets": [pg_target(pg)]}))
    with DaemonProcess(["--config", str(config)], clean_env()) as run:
        run.wait(lambda: run.up().get("orders") == 1)
        assert not _http_debug_lines(run), "INFO: requests are not logged"
        config.write_text(
            yaml.safe_dump(
                {
                    "log": {"level": "DEBUG", "format": "json"},
                    "targets": [pg_target(pg)],
                    "audit": {"url": pg.url(), "table": "poolwatch_audit_after_restart"},
                }
            )
        )
        run.process.send_signal(signal.SIGHUP)
        run.wait(lambda: any("configuration reloaded" in line for line in run.lines), "reloaded")
        warning = "reload: audit settings changed; they take effect after a restart"
        assert sum(warning in line and "WARNING" in line for line in run.lines) == 1
        reloaded = next(i for i, line in enumerate(run.lines) if "configuration reloaded" in line)
        assert json.loads(run.lines[reloaded])["level"] == "info", "the new format from the reload on"
        run.up()  # a request, logged at DEBUG
        run.wait(lambda: bool(_http_debug_lines(run)), "a request logged at DEBUG")
        assert all(json.loads(line)["level"] == "debug" for line in _http_debug_lines(run))

        config.write_text(yaml.safe_dump({"log": {"level": "INFO"}, "targets": [pg_target(pg)]}))
        run.process.send_signal(signal.SIGHUP)
        run.wait(lambda: sum("configuration reloaded" in line for line in run.lines) == 2, "reloaded")
        debug_lines = len(_http_debug_lines(run))
        assert run.up() == {"orders": 1}
        assert run.stop() == 0
    assert len(_http_debug_lines(run)) == debug_lines, "INFO again: requests are not logged"
    assert run.lines[-1].split()[1:3] == ["INFO", "poolwatch.daemon:"], "text again"
    assert pg.password not in run.output()
    assert "Traceback" not in run.output()


def _http_debug_lines(run: DaemonProcess) -> list[str]:
    """The DEBUG lines of the HTTP endpoint, one per request (in text or JSON)."""
    return [line for line in run.lines if "poolwatch.http" in line and "http 127.0.0.1" in line]


def test_check_exit_codes(pg: PostgresServer, redis_server: RedisServer, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"targets": [pg_target(pg), redis_target(redis_server)]}))
    result = subprocess.run(
        poolwatch_command("check", "-c", str(good)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TARGET", "KIND", "UP", "LATENCY", "ERROR"]
    assert {line.split()[0]: line.split()[2] for line in lines[1:]} == {"orders": "yes", "cache": "yes"}

    down = {"name": "gone", "kind": "postgres", "url": f"postgresql://u@{LOOPBACK}:{free_port()}/x"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"targets": [pg_target(pg), down]}))
    result = subprocess.run(
        poolwatch_command("check", "-c", str(bad)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    gone = next(line for line in result.stdout.splitlines() if line.startswith("gone"))
    assert "no" in gone.split()
    assert "refused" in gone.lower()

    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"targets": [{**pg_target(pg), "pool": {"size": -1}}]}))
    result = subprocess.run(
        poolwatch_command("check", "-c", str(broken)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("poolwatch: error: targets[0](orders).pool.size:")


def test_config_command_masks_secrets_and_status_reads_a_running_daemon(
    pg: PostgresServer, tmp_path: Path
) -> None:
    config = tmp_path / "poolwatch.yaml"
    config.write_text(yaml.safe_dump({"targets": [pg_target(pg)]}))
    shown = subprocess.run(
        poolwatch_command("config", "-c", str(config)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert pg.password not in shown.stdout
    assert ":***@" in shown.stdout
    with DaemonProcess(["--config", str(config)], clean_env()) as run:
        run.wait(lambda: 1 in run.up().values(), "a target up")
        status = subprocess.run(
            poolwatch_command("status", "--url", run.url),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert "orders" in status.stdout
        assert pg.password not in status.stdout
        assert run.stop() == 0
    unreachable = subprocess.run(
        poolwatch_command("status", "--url", f"http://{LOOPBACK}:{free_port()}"),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("poolwatch: error: cannot reach the daemon")


def test_two_sighups_at_once_reload_one_after_the_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each SIGHUP starts a reload thread; two close together must not both add (or remove) the
    same target: the second reload starts after the first one is done, and finds nothing to change."""

    def sqlite(name: str) -> dict[str, Any]:
        return {"name": name, "kind": "sqlite", "url": f"sqlite:///{tmp_path / name}.db"}

    reloaded = validate({"http": {"listen": "127.0.0.1:0"}, "targets": [sqlite("a"), sqlite("b")]})
    inside, most_inside, lock = 0, 0, threading.Lock()
    first_inside, go_on = threading.Event(), threading.Event()

    def slow_loader() -> Any:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
        first_inside.set()
        go_on.wait(10)  # the first reload stays in here until the second one has arrived
        with lock:
            inside -= 1
        return reloaded

    def second_arrived() -> bool:
        waiting = "reload: waiting for the reload (or start-up) under way to finish"
        return most_inside == 2 or any(r.getMessage() == waiting for r in caplog.records)

    caplog.set_level(logging.DEBUG, logger="poolwatch.daemon")
    errors: list[BaseException] = []
    with running_daemon({"targets": [sqlite("a")]}, loader=slow_loader) as daemon:

        def reload() -> None:
            try:
                daemon.reload()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reload) for _ in range(2)]
        threads[0].start()
        assert first_inside.wait(10)
        threads[1].start()
        wait_for(second_arrived, 10, "the second reload waiting (or inside as well)")
        go_on.set()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert most_inside == 1, "two reloads ran at the same time"
        assert sorted(t.name for t in daemon.settings.targets) == ["a", "b"]
        assert daemon.runtime("b").settings.name == "b"
