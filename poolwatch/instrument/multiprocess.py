"""Multi-process export: each worker's pool metrics written where ``MultiProcessCollector`` reads them.

With ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client's multiprocess recipe), the first
``instrument()`` of a process starts a daemon thread, the flusher, that every sampling interval
(``POOLWATCH_MULTIPROC_INTERVAL`` seconds, 1 by default) reads the process's pools exactly as a scrape
would (the collectors' rows, from the same in-memory state) and writes them into the process's slot
(``slots.py``), then zeroes the gauges of slots whose process has gone. The checkout path is
untouched: no file, lock or system call is added to it. The endpoint reads the files with
prometheus_client's ``MultiProcessCollector``; no poolwatch code runs in the scrape.

Gauges are summed over live workers; ``POOLWATCH_MULTIPROC_GAUGES=worker`` adds a ``worker`` label
(the slot number) instead. Fork: a flush never runs across a ``fork()`` (the flusher's lock is held
over it), the child closes its copies of the parent's slot, renews the locks its pools' collectors and
recorders share with threads the child no longer has, counts only what it does itself, and starts its
own flusher in a slot of its own.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from prometheus_client.mmap_dict import mmap_key

from poolwatch.instrument.slots import Slot, clear_free_slots

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from poolwatch.instrument.collector import PoolCollector
    from poolwatch.metrics import Rows

log = logging.getLogger("poolwatch.instrument")

DIRECTORY_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
INTERVAL_VARIABLE: Final = "POOLWATCH_MULTIPROC_INTERVAL"
GAUGES_VARIABLE: Final = "POOLWATCH_MULTIPROC_GAUGES"
GAUGE_MODES: Final = ("sum", "worker")


@dataclass(frozen=True, slots=True)
class Settings:
    """Where and how often a worker writes its pools' metrics, and whether gauges keep a worker label."""

    directory: Path
    interval: float = 1.0
    per_worker: bool = False


def settings_from_environment(environ: Mapping[str, str] | None = None) -> Settings | None:
    """The multiprocess settings, or None when ``PROMETHEUS_MULTIPROC_DIR`` is not set.

    The library reads the variable prometheus_client's own multiprocess mode reads (it cannot load
    the daemon's settings module), and its own two next to it. ``ValueError``: one line naming the
    variable."""
    env = os.environ if environ is None else environ
    directory = env.get(DIRECTORY_VARIABLE) or env.get(DIRECTORY_VARIABLE.lower())
    if not directory:
        return None
    if not Path(directory).is_dir():
        raise ValueError(f"{DIRECTORY_VARIABLE}={directory!r} is not a directory")
    raw_interval = env.get(INTERVAL_VARIABLE, "1")
    try:
        interval = float(raw_interval)
    except ValueError:
        interval = math.nan
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"{INTERVAL_VARIABLE}={raw_interval!r}: expected a number of seconds > 0")
    mode = env.get(GAUGES_VARIABLE, "sum")
    if mode not in GAUGE_MODES:
        raise ValueError(f"{GAUGES_VARIABLE}={mode!r}: expected one of {', '.join(GAUGE_MODES)}")
    return Settings(Path(directory), interval, per_worker=mode == "worker")


Values = dict[str, dict[str, float]]  # kind (counter, histogram, gauge) -> mmap key -> value


def file_values(families: Iterable[Rows], worker: str | None = None) -> Values:
    """The samples of ``families`` as prometheus_client's multiprocess files hold them: counters by
    their ``_total`` sample, histogram buckets each on its own (not cumulative: the collector adds
    them up) with their ``_sum``, gauges with a ``worker`` label when ``worker`` is given."""
    values: Values = {"counter": {}, "histogram": {}, "gauge": {}}
    for family in families:
        spec = family.spec
        name, help_, labels = spec.full_name, spec.help, list(spec.labels)
        kind = values[spec.type]
        for label_values, value in family.rows:
            if spec.type == "counter":
                kind[mmap_key(name, f"{name}_total", labels, list(label_values), help_)] = float(value)
            elif spec.type == "gauge":
                if worker is None:
                    key = mmap_key(name, name, labels, list(label_values), help_)
                else:
                    key = mmap_key(name, name, [*labels, "worker"], [*label_values, worker], help_)
                kind[key] = float(value)
            else:
                pairs, total = value
                previous = 0.0
                for le, cumulative in pairs:
                    bucket = [*labels, "le"], [*label_values, le]
                    kind[mmap_key(name, f"{name}_bucket", *bucket, help_)] = cumulative - previous
                    previous = cumulative
                kind[mmap_key(name, f"{name}_sum", labels, list(label_values), help_)] = float(total)
    return values


def subtract(values: Values, inherited: Values) -> Values:
    """``values`` less what a forked child ``inherited`` from its parent (counters and histograms)."""
    out: Values = {}
    for kind, samples in values.items():
        if kind == "gauge":
            out[kind] = samples
        else:
            base = inherited.get(kind, {})
            out[kind] = {key: value - base.get(key, 0.0) for key, value in samples.items()}
    return out


class Flusher:
    """Writes one process's pool metrics into its slot every interval, on a daemon thread."""

    def __init__(self, settings: Settings, collectors: Callable[[], list[PoolCollector]]) -> None:
        self.settings = settings
        self._collectors = collectors
        # Held by each flush and over every fork: a child never inherits a half-written flush.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slot: Slot | None = None
        self._inherited: Values = {}
        self._failed_once = False
        self._closed = False

    @property
    def slot(self) -> Slot | None:
        return self._slot

    def start(self, *, at_once: bool = True) -> None:
        """Run the writer thread; ``at_once``: take a slot and write now, not one interval later."""
        self._thread = threading.Thread(
            target=self._run, args=(at_once,), name="poolwatch-multiprocess", daemon=True
        )
        self._thread.start()

    def _run(self, at_once: bool) -> None:
        if at_once:
            self.flush()  # take the slot now: the process's series appear from its start
        while not self._stop.wait(self.settings.interval):
            self.flush()

    def read(self) -> Values:
        """This process's own samples now, as the files hold them."""
        worker = None
        if self.settings.per_worker and self._slot is not None:
            worker = str(self._slot.number)
        families = [rows for collector in self._collectors() for rows in collector.rows()]
        return subtract(file_values(families, worker), self._inherited)

    def flush(self) -> None:
        """Write this process's samples into its slot, and clear the gauges of slots gone free."""
        try:
            with self._lock:
                if self._closed:
                    return
                if self._slot is None:
                    self._slot = Slot.take(self.settings.directory)
                for kind, samples in self.read().items():
                    self._slot.write(kind, samples)
                clear_free_slots(self.settings.directory, self._slot.number)
        except Exception:
            if not self._failed_once:
                self._failed_once = True
                log.exception("poolwatch: writing pool metrics to %s failed", self.settings.directory)

    def close(self) -> None:
        """Last flush, then free the slot (its gauges zeroed): at interpreter exit. Safe to call twice."""
        self._stop.set()
        self.flush()  # even if the thread never ran: a process that counted and exits at once
        with self._lock:
            self._closed = True
            if self._slot is not None:
                self._slot.release()
                self._slot = None

    # -- fork ------------------------------------------------------------------------------------

    def before_fork(self) -> None:
        self._lock.acquire()

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> Flusher:
        """The child's own flusher: counting from what the parent had counted, in a slot of its own."""
        if self._slot is not None:
            self._slot.abandon()
        child = Flusher(self.settings, self._collectors)
        child._inherited = child.read()  # the child starts at zero: its parent wrote these
        for kind in ("gauge",):
            child._inherited.pop(kind, None)
        return child


_flusher: Flusher | None = None
_state_lock = threading.Lock()


def arm(collectors: Callable[[], list[PoolCollector]]) -> Flusher | None:
    """Start this process's flusher if multiprocess mode is on and it is not running yet."""
    global _flusher  # noqa: PLW0603 - one flusher per process, replaced in a forked child
    settings = settings_from_environment()
    if settings is None:
        return None
    with _state_lock:
        if _flusher is None:
            _flusher = Flusher(settings, collectors)
            _flusher.start()
        return _flusher


def current() -> Flusher | None:
    return _flusher


# Called by the collector module's fork handlers, in order with renewing the pools' locks.
def before_fork() -> None:
    _state_lock.acquire()
    if _flusher is not None:
        _flusher.before_fork()


def after_fork_in_parent() -> None:
    if _flusher is not None:
        _flusher.after_fork_in_parent()
    _state_lock.release()


def after_fork_in_child() -> None:
    global _flusher, _state_lock  # noqa: PLW0603 - renewed in the child: their holders are gone
    _state_lock = threading.Lock()
    if _flusher is None:
        return
    try:
        _flusher = _flusher.after_fork_in_child()
        # One interval later: a child that execs at once (subprocess with preexec_fn) writes nothing.
        _flusher.start(at_once=False)
    except Exception:
        _flusher = None
        log.exception("poolwatch: re-arming multiprocess export after fork failed")


def _close_at_exit() -> None:
    if _flusher is not None:
        _flusher.close()


atexit.register(_close_at_exit)
