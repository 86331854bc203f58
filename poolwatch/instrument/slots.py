"""Worker slots in ``PROMETHEUS_MULTIPROC_DIR``: the files a worker's pool metrics are written to.

prometheus_client's multiprocess mode writes one file set per process id, so 1,000 recycled gunicorn
workers leave 1,000 counter files behind, and every scrape reads them all. poolwatch writes per
*slot* instead: a worker takes the lowest slot whose lock file (``poolwatch-slot-N.lock``) nobody
holds (``fcntl.flock``, held for the worker's lifetime and released by the kernel however the worker
ends, ``kill -9`` included) and writes ``counter_poolwatch-N.db``, ``histogram_poolwatch-N.db`` and
``gauge_livesum_poolwatch-N.db`` in prometheus_client's own ``MmapedDict`` format, which
``MultiProcessCollector`` reads like its own. The number of slots is the peak number of instrumented
processes alive at once.

A worker adopting a slot counts on from what the slot's previous holder last wrote: its counters and
histogram buckets are added onto those, so the totals Prometheus sees never go down when workers are
recycled or crash. Gauges describe live workers only: the new holder zeroes the slot's gauges, and
every live worker zeroes the gauges of slots whose lock is free (a worker that died since).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from prometheus_client import mmap_dict

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path


class MmapedDict(Protocol):
    """The part of prometheus_client's ``MmapedDict`` (untyped) used here."""

    def read_all_values(self) -> Iterator[tuple[str, float, float]]: ...
    def write_value(self, key: str, value: float, timestamp: float) -> None: ...
    def close(self) -> None: ...


_mmaped: Any = mmap_dict.MmapedDict


# The size prometheus_client gives a new file (zeros read as a file with no value yet).
INITIAL_SIZE: Final = 1 << 16


def open_values(path: Path) -> MmapedDict:
    """``path`` open for writing in prometheus_client's multiprocess file format (created if need be).

    A new file appears under its name whole: ``MmapedDict`` would create it empty and only then
    extend it, and ``MultiProcessCollector``, answering a scrape in another worker at that moment,
    reads every ``*.db`` file it finds: an empty one fails the whole scrape. So it is made at its
    full size under another name and renamed into place (this process holds the slot's lock: no
    other writes it).
    """
    if not path.exists() or path.stat().st_size == 0:
        staging = path.with_name(f"{path.name}.{os.getpid()}.new")  # not *.db: no reader looks
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, INITIAL_SIZE)
        finally:
            os.close(fd)
        staging.replace(path)
    return cast("MmapedDict", _mmaped(str(path)))


LOCK_PATTERN: Final = re.compile(r"poolwatch-slot-(\d+)\.lock")
# The file of each kind, as MultiProcessCollector parses names: "<type>_[<gauge mode>_]<id>.db".
KINDS: Final = ("counter", "histogram", "gauge")


def lock_path(directory: Path, number: int) -> Path:
    return directory / f"poolwatch-slot-{number}.lock"


def data_path(directory: Path, number: int, kind: str) -> Path:
    prefix = "gauge_livesum" if kind == "gauge" else kind
    return directory / f"{prefix}_poolwatch-{number}.db"


def slot_numbers(directory: Path) -> list[int]:
    """Every slot that has a lock file in ``directory``, in order."""
    numbers = []
    for entry in directory.iterdir():
        match = LOCK_PATTERN.fullmatch(entry.name)
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding ``path``'s exclusive lock, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_values(path: Path) -> dict[str, float]:
    """Every key and value of an ``MmapedDict`` file (empty when there is none)."""
    if not path.exists() or path.stat().st_size == 0:
        return {}
    return {key: value for key, value, _ts, _pos in _mmaped.read_all_values_from_file(str(path))}


class Slot:
    """One slot held by this process: its lock, its three files open for writing, and the counter and
    histogram values it adopted from the slot's previous holder."""

    def __init__(self, directory: Path, number: int, lock_fd: int) -> None:
        self.directory = directory
        self.number = number
        self._lock_fd: int | None = lock_fd
        # What the previous holders of this slot counted: what this holder's own counts add onto.
        self.base = {
            kind: read_values(data_path(directory, number, kind)) for kind in ("counter", "histogram")
        }
        self._files = {kind: open_values(data_path(directory, number, kind)) for kind in KINDS}
        self._written: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
        zero_gauges(self._files["gauge"])

    @classmethod
    def take(cls, directory: Path) -> Slot:
        """The lowest slot in ``directory`` that no live process holds (a new one past the last)."""
        number = 0
        while True:
            fd = _try_lock(lock_path(directory, number))
            if fd is not None:
                try:
                    return cls(directory, number, fd)
                except BaseException:
                    os.close(fd)
                    raise
            number += 1

    def write(self, kind: str, values: Mapping[str, float]) -> None:
        """Write this holder's own ``values`` of one kind: counters and histogram buckets on top of
        the adopted base; gauges as they are. Keys missing from ``values`` keep what they hold."""
        base = self.base.get(kind, {})
        written = self._written[kind]
        target = self._files[kind]
        for key, value in values.items():
            total = base.get(key, 0.0) + value
            if written.get(key) != total:
                target.write_value(key, total, 0.0)
                written[key] = total

    def clear_gauges(self) -> None:
        zero_gauges(self._files["gauge"])
        self._written["gauge"].clear()

    def release(self) -> None:
        """Zero the gauges, close the files and free the slot. Safe to call twice."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(Exception):
            self.clear_gauges()
        for file in self._files.values():
            file.close()
        os.close(self._lock_fd)
        self._lock_fd = None

    def abandon(self) -> None:
        """Close this process's copies of the slot's descriptors without touching the files: in a
        child after fork, where the parent still holds the slot (the lock stays the parent's)."""
        if self._lock_fd is None:
            return
        for file in self._files.values():
            with contextlib.suppress(Exception):
                file.close()
        os.close(self._lock_fd)
        self._lock_fd = None


def zero_gauges(gauges: MmapedDict) -> None:
    for key, value, _ts in list(gauges.read_all_values()):
        if value != 0.0:
            gauges.write_value(key, 0.0, 0.0)


def clear_free_slots(directory: Path, own: int | None) -> list[int]:
    """Zero the gauges of every slot whose lock is free (its process has gone); the numbers of the
    slots cleared. The lock is held while clearing, so a process taking the slot meanwhile waits for
    nothing: it simply takes the next one."""
    cleared = []
    for number in slot_numbers(directory):
        if number == own:
            continue
        path = data_path(directory, number, "gauge")
        if not any(value != 0.0 for value in read_values(path).values()):
            continue
        fd = _try_lock(lock_path(directory, number))
        if fd is None:
            continue  # alive
        try:
            gauges = open_values(path)
            try:
                zero_gauges(gauges)
            finally:
                gauges.close()
            cleared.append(number)
        finally:
            os.close(fd)
    return cleared


def files(directory: Path) -> Iterator[Path]:
    """poolwatch's files in ``directory`` (locks and data)."""
    for number in slot_numbers(directory):
        yield lock_path(directory, number)
        for kind in KINDS:
            path = data_path(directory, number, kind)
            if path.exists():
                yield path
