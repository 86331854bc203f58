"""The four ways a configuration is read agree: `poolwatch config`, `check` and `run` refuse the same
file with the same one line and exit 2, and a SIGHUP reload refuses it with that line in the log and
keeps running. No servers: the valid configuration watches a SQLite file."""

from __future__ import annotations

import signal
import subprocess
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.daemonkit import DaemonProcess, clean_env, poolwatch_command

if TYPE_CHECKING:
    from pathlib import Path

REFUSED: dict[str, tuple[dict[str, object], str]] = {
    "in-memory": (
        {"name": "mem", "kind": "sqlite", "url": "sqlite:///:memory:"},
        "targets[0](mem): url names an in-memory SQLite database",
    ),
    "probe-timeout-tiny": (
        {"name": "lite", "kind": "sqlite", "url": "sqlite:///{tmp}/app.db", "probe": {"timeout": 1e-9}},
        "targets[0](lite).probe.timeout: expected greater than or equal to 0.1",
    ),
}


def write(path: Path, target: dict[str, object], tmp: Path) -> None:
    text = yaml.safe_dump({"targets": [target]}).replace("{tmp}", str(tmp))
    path.write_text(text)


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("command", ["config", "check", "run"])
def test_config_check_and_run_refuse_alike(tmp_path: Path, command: str, case: str) -> None:
    target, expected = REFUSED[case]
    path = tmp_path / "poolwatch.yaml"
    write(path, target, tmp_path)
    extra = ["--listen", "127.0.0.1:0"] if command == "run" else []
    result = subprocess.run(
        poolwatch_command(command, "-c", str(path), *extra),
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"poolwatch: error: {expected}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_reload_refuses_it_with_the_same_line_and_keeps_running(tmp_path: Path, case: str) -> None:
    path = tmp_path / "poolwatch.yaml"
    write(path, {"name": "lite", "kind": "sqlite", "url": f"sqlite:///{tmp_path}/app.db"}, tmp_path)
    target, expected = REFUSED[case]
    with DaemonProcess(["-c", str(path)], clean_env(HOME=str(tmp_path))) as run:
        run.wait(lambda: run.up().get("lite") == 1, "the SQLite target up")
        write(path, target, tmp_path)
        run.process.send_signal(signal.SIGHUP)
        run.wait(lambda: "reload refused" in run.output(), "the reload refused")
        assert run.up() == {"lite": 1}, "the running configuration is kept"
        code = run.stop()
    assert code == 0, run.output()
    refused = [line for line in run.lines if "reload refused" in line]
    assert len(refused) == 1, run.output()
    assert f"keeping the running configuration: {expected}" in refused[0]
    assert "Traceback" not in run.output()
