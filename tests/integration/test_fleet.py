"""Beyond one process, with real ``poolwatch run`` processes: replicas share the targets out between
them, and targets come and go with the files of a directory, without a SIGHUP."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import yaml

from tests.daemonkit import DaemonProcess, clean_env

if TYPE_CHECKING:
    from pathlib import Path


def sqlite_target(tmp_path: Path, name: str) -> dict[str, str]:
    return {"name": name, "kind": "sqlite", "url": f"sqlite:///{tmp_path / name}.db"}


def test_replicas_share_the_targets_out_between_them(tmp_path: Path) -> None:
    names = [f"t{i:02d}" for i in range(9)]
    config = tmp_path / "poolwatch.yaml"
    config.write_text(yaml.safe_dump({"targets": [sqlite_target(tmp_path, n) for n in names]}))
    env = clean_env(POOLWATCH_STATE_DIR=str(tmp_path))
    with (
        DaemonProcess(["--config", str(config), "--shard", "0/3"], env) as first,
        DaemonProcess(["--config", str(config), "--shard", "1/3"], env) as second,
        # A StatefulSet pod: the index is the ordinal ending its host name.
        DaemonProcess(["--config", str(config), "--shard-count", "3"], {**env, "HOSTNAME": "pw-2"}) as third,
    ):
        replicas = (first, second, third)
        for run in replicas:
            run.wait(functools.partial(_all_up, run), "its targets up")
        owned = [set(run.up()) for run in replicas]
        assert sorted(n for share in owned for n in share) == names  # each target exactly once
        assert all(owned), owned
        assert "shard 2/3, targets" in third.lines[0]


def test_targets_follow_the_files_of_a_directory_without_a_sighup(tmp_path: Path) -> None:
    directory = tmp_path / "targets.d"
    directory.mkdir()
    (directory / "two.yaml").write_text(
        yaml.safe_dump([sqlite_target(tmp_path, "alpha"), sqlite_target(tmp_path, "beta")])
    )
    config = tmp_path / "poolwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "targets": [sqlite_target(tmp_path, "main")],
                "target_files": {"directory": str(directory), "interval": 0.2},
            }
        )
    )
    with DaemonProcess(["--config", str(config)], clean_env(POOLWATCH_STATE_DIR=str(tmp_path))) as run:
        run.wait(lambda: set(run.up()) == {"main", "alpha", "beta"}, "the file's targets")
        # A second file, in JSON with a targets list: its target is added.
        (directory / "more.json").write_text(json.dumps({"targets": [sqlite_target(tmp_path, "gamma")]}))
        run.wait(lambda: set(run.up()) == {"main", "alpha", "beta", "gamma"}, "the new file's target")
        # A broken file: one error line naming it, and the running targets stay.
        (directory / "broken.yaml").write_text("- {name: delta, kind: sqlite\n")
        run.wait(lambda: any("broken.yaml" in line for line in run.lines), "the error line")
        errors = [line for line in run.lines if "broken.yaml" in line]
        assert "reload refused, keeping the running configuration" in errors[0]
        assert "Traceback" not in run.output()
        assert set(run.up()) == {"main", "alpha", "beta", "gamma"}
        # Fixed, and a file removed: both take effect.
        (directory / "broken.yaml").write_text(yaml.safe_dump(sqlite_target(tmp_path, "delta")))
        (directory / "two.yaml").unlink()
        run.wait(lambda: set(run.up()) == {"main", "gamma", "delta"}, "the directory as it is now")
        assert run.stop() == 0


def _all_up(run: DaemonProcess) -> bool:
    up = run.up()
    return bool(up) and all(up.values())
