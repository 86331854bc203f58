"""Worker slots in PROMETHEUS_MULTIPROC_DIR: the lowest free slot, counters carried over by the next
holder, gauges of gone workers zeroed, and files prometheus_client's MultiProcessCollector reads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from poolwatch.instrument import slots
from poolwatch.instrument.multiprocess import file_values, settings_from_environment, subtract
from poolwatch.instrument.slots import Slot, clear_free_slots, data_path, read_values, slot_numbers
from poolwatch.metrics import POOL_METRICS, Rows

SPECS = {spec.name: spec for spec in POOL_METRICS}
APP = (("pool", "app"), ("server", "db"))  # the labels of one pool's series, sorted
IDLE = (("pool", "app"), ("server", "db"), ("state", "idle"))


def merged(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def of_pool(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """The value of the pool ``app``'s series ``name``, whatever its server label."""
    (value,) = [v for (n, labels), v in samples.items() if n == name and ("pool", "app") in labels]
    return value


def pool_rows(checkouts: int, idle: int, waits: list[float]) -> list[Rows]:
    spec = SPECS["pool_wait_seconds"]
    assert spec.buckets is not None
    pairs = [(repr(float(b)), float(sum(w <= b for w in waits))) for b in spec.buckets]
    pairs.append(("+Inf", float(len(waits))))
    return [
        Rows(SPECS["pool_checkouts"], [(("app", "db"), checkouts)]),
        Rows(SPECS["pool_connections"], [(("app", "db", "idle"), idle), (("app", "db", "used"), 0)]),
        Rows(spec, [(("app", "db"), (pairs, sum(waits)))]),
    ]


def write(slot: Slot, rows: list[Rows], worker: str | None = None) -> None:
    for kind, values in file_values(rows, worker).items():
        slot.write(kind, values)


def test_each_process_takes_the_lowest_free_slot(tmp_path: Path) -> None:
    first, second = Slot.take(tmp_path), Slot.take(tmp_path)
    assert (first.number, second.number) == (0, 1)
    first.release()
    third = Slot.take(tmp_path)
    assert third.number == 0
    assert slot_numbers(tmp_path) == [0, 1]
    second.release()
    third.release()
    third.release()  # twice is fine


def test_multiprocess_collector_sums_the_slots(tmp_path: Path) -> None:
    one, two = Slot.take(tmp_path), Slot.take(tmp_path)
    write(one, pool_rows(5, 1, [0.001, 0.2]))
    write(two, pool_rows(7, 2, [0.003]))
    samples = merged(tmp_path)
    assert samples["poolwatch_pool_checkouts_total", APP] == 12
    assert samples["poolwatch_pool_connections", IDLE] == 3
    assert samples["poolwatch_pool_wait_seconds_count", APP] == 3
    assert samples["poolwatch_pool_wait_seconds_bucket", (("le", "0.005"), *APP)] == 2
    assert samples["poolwatch_pool_wait_seconds_bucket", (("le", "+Inf"), *APP)] == 3
    assert samples["poolwatch_pool_wait_seconds_sum", APP] == pytest.approx(0.204)


def test_a_slots_files_are_never_seen_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MultiProcessCollector, scraping in another worker, reads every *.db file it finds and fails the
    whole scrape on an empty one: prometheus_client's MmapedDict creates a file empty and only then
    extends it, so each file a slot opens is already whole under its name (a 0-byte one left by a
    worker killed at the wrong moment included)."""
    sizes: dict[str, int] = {}
    real = slots._mmaped

    def opened(path: str) -> object:
        file = Path(path)
        sizes[file.name] = file.stat().st_size  # FileNotFoundError: not made first
        return real(path)

    monkeypatch.setattr(slots, "_mmaped", opened)
    data_path(tmp_path, 0, "counter").write_bytes(b"")  # what a kill between create and extend leaves
    slot = Slot.take(tmp_path)
    assert set(sizes) == {data_path(tmp_path, 0, kind).name for kind in ("counter", "histogram", "gauge")}
    assert all(size > 0 for size in sizes.values()), sizes
    assert [path.name for path in tmp_path.iterdir() if not path.name.endswith((".db", ".lock"))] == []
    merged(tmp_path)  # reads every file
    write(slot, pool_rows(5, 1, [0.001]))
    assert merged(tmp_path)["poolwatch_pool_checkouts_total", APP] == 5
    slot.release()


def test_a_new_holder_counts_on_from_the_slots_last_values(tmp_path: Path) -> None:
    old = Slot.take(tmp_path)
    write(old, pool_rows(40, 2, [0.001] * 4))
    old.abandon()  # as if killed: the files keep what it last wrote, the kernel frees the lock
    new = Slot.take(tmp_path)
    assert new.number == 0
    samples = merged(tmp_path)
    assert samples["poolwatch_pool_connections", IDLE] == 0
    assert samples["poolwatch_pool_checkouts_total", APP] == 40
    write(new, pool_rows(3, 1, [0.5]))
    samples = merged(tmp_path)
    assert samples["poolwatch_pool_checkouts_total", APP] == 43
    assert samples["poolwatch_pool_wait_seconds_count", APP] == 5
    assert samples["poolwatch_pool_connections", IDLE] == 1


def test_live_workers_zero_the_gauges_of_slots_whose_process_is_gone(tmp_path: Path) -> None:
    live, gone = Slot.take(tmp_path), Slot.take(tmp_path)
    write(live, pool_rows(1, 1, []))
    write(gone, pool_rows(1, 2, []))
    assert clear_free_slots(tmp_path, live.number) == []  # held: left alone
    gone.abandon()
    assert clear_free_slots(tmp_path, live.number) == [gone.number]
    samples = merged(tmp_path)
    assert samples["poolwatch_pool_connections", IDLE] == 1
    assert samples["poolwatch_pool_checkouts_total", APP] == 2  # counters stay
    assert set(read_values(data_path(tmp_path, gone.number, "gauge")).values()) == {0.0}
    assert clear_free_slots(tmp_path, live.number) == []  # nothing left to clear


def test_per_worker_gauges_carry_the_slot_number(tmp_path: Path) -> None:
    one, two = Slot.take(tmp_path), Slot.take(tmp_path)
    write(one, pool_rows(1, 1, []), worker="0")
    write(two, pool_rows(1, 2, []), worker="1")
    samples = merged(tmp_path)
    assert samples["poolwatch_pool_connections", (*IDLE, ("worker", "1"))] == 2
    assert samples["poolwatch_pool_checkouts_total", APP] == 2


def test_a_forked_child_counts_only_its_own() -> None:
    parent = file_values(pool_rows(10, 1, [0.1]))
    child = file_values(pool_rows(13, 1, [0.1, 0.2]))
    own = subtract(child, parent)
    assert sorted(own["counter"].values()) == [3.0]
    assert own["gauge"] == child["gauge"]
    assert sum(own["histogram"].values()) == pytest.approx(1 + 0.2)  # one bucket hit, and the sum


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/dir"},
            "PROMETHEUS_MULTIPROC_DIR='/nonexistent/dir' is not",
        ),
        ({"POOLWATCH_MULTIPROC_INTERVAL": "0"}, "POOLWATCH_MULTIPROC_INTERVAL='0': expected a number"),
        ({"POOLWATCH_MULTIPROC_INTERVAL": "soon"}, "POOLWATCH_MULTIPROC_INTERVAL='soon': expected"),
        (
            {"POOLWATCH_MULTIPROC_GAUGES": "pid"},
            "POOLWATCH_MULTIPROC_GAUGES='pid': expected one of sum, worker",
        ),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=r"expected|not a directory") as raised:
        settings_from_environment({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), **environ})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_settings_are_off_without_the_directory(tmp_path: Path) -> None:
    assert settings_from_environment({}) is None
    settings = settings_from_environment(
        {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "POOLWATCH_MULTIPROC_GAUGES": "worker"}
    )
    assert settings is not None
    assert settings.per_worker
    assert settings.interval == 1.0


FORK = """
import os, sys
import sqlalchemy
import poolwatch
from poolwatch.instrument import multiprocess
engine = sqlalchemy.create_engine("sqlite:///{db}", poolclass=sqlalchemy.pool.QueuePool)
poolwatch.instrument(engine, name="app")
for _ in range(5):
    with engine.connect():
        pass
pid = os.fork()
if pid == 0:
    for _ in range(7):
        with engine.connect():
            pass
    multiprocess.current().close()  # what the interpreter's exit does; os._exit skips it
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_pool_used_across_fork_is_counted_once_and_its_use_in_the_child_flagged(tmp_path: Path) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    script = textwrap.dedent(FORK.format(db=tmp_path / "db.sqlite"))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "POOLWATCH_MULTIPROC_INTERVAL": "30"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    samples = merged(directory)
    assert of_pool(samples, "poolwatch_pool_checkouts_total") == 12  # 5 + 7: none twice
    assert of_pool(samples, "poolwatch_pool_inherited_checkouts_total") == 7
    assert done.stderr.count("is used in process") == 1, done.stderr
    assert "engine.dispose(close=False)" in done.stderr
    assert slot_numbers(directory) == [0, 1]
