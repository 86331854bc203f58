"""The audit spool: an append-only store that keeps every acknowledged record through kill -9, stays
bounded, migrates the JSON-lines spool of earlier versions, and never rewrites what it holds."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from poolwatch.config import validate
from poolwatch.errors import ConfigError
from poolwatch.reaper.spool import SQLITE_HEADER, Spool, check_spool_directory
from tests.daemonkit import clean_env

WRITER = """
import signal, sys, uuid
from poolwatch.reaper.spool import Spool

if sys.argv[2] != "0":  # a file size limit: writes past it fail (EFBIG) instead of killing us
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
spool = Spool(1_000_000, sys.argv[1])
for n in range(int(sys.argv[3])):
    record_id = str(uuid.uuid4())
    spool.push({"record_id": record_id, "n": n, "query": "SELECT 1" * 20})
    print(record_id, flush=True)  # acknowledged: push() returned
print("in memory", len(spool), len(spool.peek()), flush=True)
"""


def record(n: int) -> dict[str, object]:
    return {"record_id": str(uuid.uuid4()), "n": n, "query": "SELECT 1" * 20}


def writer(path: Path, count: int, file_limit: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(file_limit), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_every_acknowledged_record_survives_kill_9_mid_stream(tmp_path):
    path = tmp_path / "spool.db"
    acknowledged: list[str] = []
    # Three writers in turn on one store, each killed while it is appending: after 40, 1 and 25
    # acknowledged records (the kill lands somewhere in the next append's commit, or between two).
    for stop_after in (40, 1, 25):
        process = writer(path, 100_000)
        assert process.stdout is not None
        acknowledged.extend(process.stdout.readline().strip() for _ in range(stop_after))
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        assert process.returncode == -signal.SIGKILL
        # What it printed before the kill and we had not read yet was acknowledged too.
        acknowledged.extend(line.strip() for line in process.stdout if line.endswith("\n"))
    spool = Spool(1_000_000, str(path))
    try:
        kept = [r["record_id"] for r in spool.peek()]
        # Every acknowledged record is there, in order; at most one more per kill (committed, but
        # killed before it could say so).
        assert [r for r in kept if r in set(acknowledged)] == acknowledged
        assert len(kept) - len(acknowledged) <= 3
        assert len(spool) == len(kept)
    finally:
        spool.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_full_disk_keeps_records_in_memory_and_says_so(tmp_path):
    path = tmp_path / "spool.db"
    Spool(10, str(path)).close()  # the store exists; now writes past 64 KiB fail with EFBIG
    process = writer(path, 100, file_limit=64 * 1024)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "in memory 100 100"
    assert len(lines) == 101
    assert "cannot be written" in err
    assert "records are kept in memory until a restart" in err


def test_the_bound_drops_the_oldest_and_counts_across_a_restart(tmp_path):
    path = str(tmp_path / "spool.db")
    dropped: list[int] = []
    spool = Spool(3, path, on_drop=dropped.append)
    for n in range(5):
        spool.push(record(n))
    assert [r["n"] for r in spool.peek()] == [2, 3, 4]
    assert dropped == [1, 1]
    spool.close()
    smaller = Spool(2, path, on_drop=dropped.append)  # restarted with a smaller bound
    assert [r["n"] for r in smaller.peek()] == [3, 4]
    assert dropped == [1, 1, 1]
    smaller.remove({r["record_id"] for r in smaller.peek(1)})
    assert len(smaller) == 1
    assert [r["n"] for r in smaller.peek()] == [4]


def test_a_json_lines_spool_of_an_earlier_version_is_migrated_on_start(tmp_path):
    path = tmp_path / "spool.jsonl"
    records = [record(n) for n in range(3)]
    old = "".join(json.dumps(r) + "\n" for r in records[:2]) + "{not json\n" + json.dumps(records[2]) + "\n"
    path.write_text(old)
    spool = Spool(10, str(path))
    assert spool.peek() == records
    spool.push(record(3))
    spool.close()
    assert path.read_bytes().startswith(SQLITE_HEADER)
    assert (tmp_path / "spool.jsonl.unreadable").read_text() == old  # the unreadable line is kept
    assert not (tmp_path / "spool.jsonl.migrating").exists()
    again = Spool(10, str(path))  # opened again: nothing to migrate, nothing doubled
    assert [r["n"] for r in again.peek()] == [0, 1, 2, 3]


def test_an_empty_file_from_an_earlier_version_opens_as_an_empty_store(tmp_path):
    path = tmp_path / "spool.jsonl"
    path.write_text("")  # what the JSON-lines spool left once everything was delivered
    spool = Spool(10, str(path))
    assert len(spool) == 0
    spool.push(record(0))
    assert len(Spool(10, str(path))) == 1


def test_a_spool_that_cannot_be_opened_keeps_records_in_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    spool = Spool(10, str(blocker / "spool.db"))  # its directory would have to be inside a file
    spool.push(record(0))
    assert len(spool) == 1
    assert "cannot be opened" in caplog.text


def test_an_append_writes_the_same_bytes_however_many_records_wait(tmp_path):
    """O(1) appends, counted in bytes written (wchar in /proc/self/io), not in time: an append at
    10,000 waiting records writes what one at 1,000 does (a spool rewritten per record writes 10x)."""

    def bytes_per_append(waiting: int) -> float:
        path = tmp_path / f"spool-{waiting}.jsonl"
        path.write_text("".join(json.dumps(record(n)) + "\n" for n in range(waiting)))
        spool = Spool(1_000_000, str(path))  # migrated in one transaction
        spool.close()  # the checkpoint leaves an empty write-ahead log behind
        spool = Spool(1_000_000, str(path))
        before = written()
        for n in range(50):
            spool.push(record(n))
        per_append = (written() - before) / 50
        spool.close()
        return per_append

    small, large = bytes_per_append(1_000), bytes_per_append(10_000)
    assert large < 1.5 * small, (small, large)


def written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_a_read_only_spool_creates_migrates_and_trims_nothing(tmp_path):
    missing = tmp_path / "missing.db"
    assert len(Spool(10, str(missing), read_only=True)) == 0
    assert not missing.exists()
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(record(n)) + "\n" for n in range(3)))
    before = old.read_text()
    assert len(Spool(2, str(old), read_only=True)) == 3  # above the bound, and left as it is
    assert old.read_text() == before
    closed = tmp_path / "closed.db"
    writer = Spool(10, str(closed))
    writer.push(record(0))
    writer.close()  # the last connection folds its write-ahead log back and removes it
    reader = Spool(10, str(closed), read_only=True)
    assert len(reader) == 1
    reader.close()
    assert sorted(p.name for p in tmp_path.glob("closed.db*")) == ["closed.db"]  # no -wal, -shm left
    live = tmp_path / "live.db"
    daemon = Spool(10, str(live))
    daemon.push(record(0))
    reader = Spool(10, str(live), read_only=True)  # while the daemon has it open
    assert [r["n"] for r in reader.peek()] == [0]
    reader.close()
    daemon.push(record(1))
    assert len(daemon) == 2


def test_a_runs_records_go_in_together_and_survive_a_restart(tmp_path):
    path = str(tmp_path / "spool.db")
    dropped: list[int] = []
    spool = Spool(4, path, on_drop=dropped.append)
    records = [{"record_id": str(i), "pid": i} for i in range(6)]
    spool.push_all([records[0], records[0]])  # the same record twice: kept once
    spool.push_all(records[1:])
    assert len(spool) == 4
    assert sum(dropped) == 2  # the bound drops the oldest, as for single records
    spool.close()
    reopened = Spool(4, path)
    assert [r["pid"] for r in reopened.peek()] == [2, 3, 4, 5]
    reopened.close()


def test_a_spool_outside_the_state_directory_needs_an_existing_directory(tmp_path):
    state = tmp_path / "state"
    check_spool_directory(None, str(state))
    check_spool_directory(str(tmp_path / "spool.db"), None)  # the directory exists
    check_spool_directory(str(state / "spool.db"), str(state))  # made with the spool
    check_spool_directory(str(state / "audit" / "spool.db"), str(state))
    for missing in (tmp_path / "typo" / "spool.db", tmp_path / "statex" / "spool.db"):
        with pytest.raises(ValueError, match="which does not exist"):
            check_spool_directory(str(missing), str(state))
    with pytest.raises(ConfigError) as refused:
        validate(
            {"audit": {"spool_path": str(tmp_path / "typo" / "deep" / "spool.db")}}, state_dir=str(state)
        )
    assert str(refused.value) == (
        f"audit: spool_path points into the directory {str(tmp_path / 'typo' / 'deep')!r}, "
        "which does not exist (create it first)"
    )
    assert validate({"audit": {"spool_path": str(state / "spool.db")}}, state_dir=str(state))


def test_poolwatch_config_refuses_a_spool_in_a_missing_directory_and_creates_nothing(tmp_path):
    path = tmp_path / "poolwatch.yaml"
    path.write_text(f'audit: {{spool_path: "{tmp_path}/typo/spool.db"}}\n')
    result = subprocess.run(
        [sys.executable, "-m", "poolwatch", "config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path), POOLWATCH_STATE_DIR=str(tmp_path / "state")),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    expected = (
        f"poolwatch: error: audit: spool_path points into the directory '{tmp_path}/typo', "
        "which does not exist (create it first)"
    )
    assert result.stderr.splitlines() == [expected]
    assert not (tmp_path / "typo").exists()


def test_present_names_the_records_waiting_among_those_asked(tmp_path):
    spool = Spool(10_000, str(tmp_path / "spool.db"))
    records = [record(n) for n in range(1200)]
    spool.push_all(records)
    spool.remove({str(records[0]["record_id"])})
    asked = [str(r["record_id"]) for r in records[:1100]] + [str(uuid.uuid4())]
    assert spool.present(asked) == {str(r["record_id"]) for r in records[1:1100]}
    assert spool.present([]) == set()
    spool.close()
