"""The raw facts pool hooks record on the hot path, and their folding into metric values at scrape time.

A pooled checkout costs ~20 us; a prometheus_client ``Histogram.observe`` plus a gauge and a counter
update (each behind a lock) cost about half of that again. So hooks take no lock and touch no
prometheus_client object: they bump ``itertools.count`` objects (``next()`` is one C call, atomic under
the GIL), append floats to bounded deques and set dict items. The collector folds the samples into
histogram buckets (``bisect`` in C, through ``map``) when Prometheus scrapes, under a lock only the
scraping side takes. Memory is bounded without scrapes: each deque keeps at most ``SAMPLE_LIMIT``
samples (the newest); counters stay exact even then.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import linecache
import logging
import os
import threading
import time
import weakref
from _thread import get_ident
from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass, field
from sys import _current_frames as current_frames
from sys import _getframe as getframe
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Final

from poolwatch.errors import reason_of
from poolwatch.instrument.holder import ByHolder
from poolwatch.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from poolwatch.instrument.holder import Holder

log = logging.getLogger("poolwatch.instrument")

SAMPLE_LIMIT: Final = 65_536
CONNECT_ERROR_REASONS: Final = ("auth", "refused", "timeout", "dns", "too_many_connections", "other")
CLOSE_REASONS: Final = (
    "invalidated",
    "pre_ping_failed",
    "recycled",
    "max_lifetime",
    "idle_timeout",
    "overflow",
    "error",
    "dispose",
)
# Max lifetime is shortened by up to 2.5 %, drawn per connection when it opens (SQLAlchemy and
# redis-py alike), so connections opened together do not expire together.
MAX_JITTER: Final = 0.025
# How many innermost frames of the holding thread a leak warning shows as it is now (``format_origin``).
NOW_FRAMES: Final = 8


class Tally:
    """A monotonic counter: hooks call ``next(tally.counter)`` (no lock); ``value()`` reads it.

    ``next()`` on an ``itertools.count`` is one C call, atomic under the GIL; calling the bound
    ``counter.__next__`` instead goes through a method-wrapper, which builds an argument tuple.
    ``itertools.count`` has no way to read its value without advancing it, so ``value()`` advances it
    and remembers how many times it did. ``value()`` callers must serialise among themselves.
    """

    __slots__ = ("_peeks", "counter")

    def __init__(self) -> None:
        self.counter = itertools.count()
        self._peeks = 0

    def hit(self) -> None:
        next(self.counter)

    def value(self) -> int:
        current = next(self.counter) - self._peeks
        self._peeks += 1
        return current

    def carry(self, count: int) -> None:
        """Count on from ``count`` more (what a previous tally of the same pool reached); hooks are
        untouched. Serialised with ``value()`` like it."""
        self._peeks -= count


class Samples:
    """Durations appended by hooks, folded into cumulative histogram buckets by the scraper."""

    __slots__ = (
        "_cumulative",
        "_overflowed",
        "append",
        "buckets",
        "count",
        "cumulative_counts",
        "samples",
        "sinks",
        "total",
    )

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.samples: deque[float] = deque(maxlen=SAMPLE_LIMIT)
        self.append: Callable[[float], None] = self.samples.append
        self.cumulative_counts = [0] * len(buckets)
        self.count = 0
        self.total = 0.0
        self._overflowed = False
        self._cumulative: tuple[int, float, tuple[list[tuple[str, float]], float]] | None = None
        # Whatever else takes the folded samples (OpenTelemetry histograms, poolwatch.otel): each is
        # handed every batch, on the folding side only. Replaced whole, never changed in place.
        self.sinks: tuple[Callable[[list[float]], object], ...] = ()

    def fold(self) -> None:
        """Move the pending samples into the bucket counts (scraping side only)."""
        pending = len(self.samples)
        if not pending:  # most pools between two scrapes close together: nothing to sort or bisect
            return
        if pending == SAMPLE_LIMIT and not self._overflowed:
            self._overflowed = True
            log.warning(
                "more than %d pool samples between two scrapes: histograms keep the newest; "
                "counters stay exact (scrape more often, or run housekeeping)",
                SAMPLE_LIMIT,
            )
        popleft = self.samples.popleft
        drained: list[float] = []
        # A full deque drops its oldest samples as hooks append, so it may run dry before `pending`.
        with contextlib.suppress(IndexError):
            drained.extend([popleft() for _ in range(pending)])
        # Sorting floats is C all the way (~50 ns a sample); then one bisection per bucket bound.
        # A bisection per sample instead compares Python floats one by one: ~4x slower.
        drained.sort()
        for index, bound in enumerate(self.buckets):
            self.cumulative_counts[index] += bisect_right(drained, bound)  # le: value <= bound
        self.count += len(drained)
        self.total += sum(drained)
        for sink in self.sinks:
            sink(drained)

    def carry(self, previous: Samples) -> None:
        """Add the folded bucket counts, count and sum of ``previous`` (same buckets; scraping side)."""
        self.cumulative_counts = [
            a + b for a, b in zip(self.cumulative_counts, previous.cumulative_counts, strict=True)
        ]
        self.count += previous.count
        self.total += previous.total

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """``(le, cumulative count)`` pairs ending with +Inf, and the sum, as of the last fold: the
        same object while nothing was added (the renderer then reuses its text at once)."""
        last = self._cumulative
        if last is not None and last[0] == self.count and last[1] == self.total:
            return last[2]
        pairs = [
            (_le(bound), float(n)) for bound, n in zip(self.buckets, self.cumulative_counts, strict=True)
        ]
        pairs.append(("+Inf", float(self.count)))
        result = (pairs, self.total)
        self._cumulative = (self.count, self.total, result)
        return result


@functools.lru_cache(maxsize=256)
def _le(bound: float) -> str:
    # Formatted once per bound, not per bucket per scrape (a third of a 100-pool scrape's time).
    return repr(float(bound))


# Where a connection was checked out, for a leak warning: the code object and the offset of the last
# instruction of the one frame of the caller that checked it out, and the identity of the thread that
# did: ``(code, lasti, thread_ident)``. Code objects keep no application object alive (a frame would
# keep its locals, and so the connection the application dropped, alive); line numbers are worked out
# from the offsets only when a leak is reported. One frame is what the checkout budget allows (each
# frame looked at costs a frame object, ~1,000 instructions); the rest of the story comes from the
# holding thread's stack as it is when the leak is reported (``format_origin``).
Origin = tuple[object, ...]


class Ledger:
    """Where each connection of one pool is, as its hooks last saw it; owned by that pool's hooks.

    Two small maps, keyed by the pool's own entry for a connection (a SQLAlchemy pool entry, a
    redis-py connection): ``checked_out`` (recorder-clock time it was handed out) while a caller has
    it, ``idle_since`` (time it was last returned, pinged or opened) for the pool's idle connections.
    An entry leaves ``checked_out`` when it comes back; its stale ``idle_since`` while out is never
    read (housekeeping reads idle connections only). ``origins`` holds where each connection now out
    was checked out, only with leak detection on; ``holders`` what holds it, when the application
    named a holder (``poolwatch.holder``, the route middleware). Hooks write without a lock (single
    dict operations, atomic under the GIL). The recorder refers to the current ledger weakly: a pool
    that is gone takes its entries with it.
    """

    __slots__ = ("__weakref__", "checked_out", "holders", "idle_since", "origins", "pid")

    def __init__(self, idle: Iterable[object] = (), now: float = 0.0) -> None:
        self.pid = os.getpid()  # the process the pool was hooked in: used in another, it was forked
        self.checked_out: dict[object, float] = {}
        self.idle_since: dict[object, float] = dict.fromkeys(idle, now)
        self.origins: dict[object, Origin] = {}
        self.holders: dict[object, Holder] = {}

    def forget(self, key: object) -> None:
        """Drop every trace of ``key`` (a connection closed for good, detached or reset away)."""
        self.checked_out.pop(key, None)
        self.idle_since.pop(key, None)
        self.origins.pop(key, None)
        self.holders.pop(key, None)

    def clear(self) -> None:
        self.checked_out.clear()
        self.idle_since.clear()
        self.origins.clear()
        self.holders.clear()


def capture_origin(depth: int) -> Origin:
    """The frame ``depth`` frames above this one's caller (the caller itself on a shallower stack).

    The connect hooks inline this (a call is ~500 instructions of the budget); it stays for adapters
    whose checkout path is not hot and for the tests that pin the shape of an ``Origin``.
    """
    try:
        frame = getframe(depth + 1)
    except ValueError:  # a shallower stack than expected
        frame = getframe(1)
    return (frame.f_code, frame.f_lasti, get_ident())


def capture_origin_outside(package_dir: str) -> Origin:
    """Like ``capture_origin``, the first frame of the caller whose code is not under ``package_dir``
    (a library's own frames between the hook and the application vary by call path)."""
    frame = getframe(2)
    while frame.f_code.co_filename.startswith(package_dir) and frame.f_back is not None:
        frame = frame.f_back
    return (frame.f_code, frame.f_lasti, get_ident())


def format_origin(origin: Origin | None) -> str:
    """Where an ``Origin`` checked its connection out, as ``traceback`` prints a frame, and where the
    thread that did is now (its innermost ``NOW_FRAMES`` frames), when that thread is still alive.

    The thread's stack now is often where the connection is held (a slow query, a call that hangs),
    and for code that checks out through layers of a library it shows the application's frames the
    checkout frame alone cannot. (In asyncio code that thread runs the event loop: its stack now
    tells little.)
    """
    if not origin:
        return "  (stack not recorded)"
    code, lasti, ident = origin
    assert isinstance(code, CodeType)
    assert isinstance(lasti, int)
    assert isinstance(ident, int)
    lines = _frame_lines(code, _line_of(code, lasti))
    # Not when the holder is the thread reporting (a scrape in the same thread): its stack now is this.
    frame = current_frames().get(ident) if ident != get_ident() else None
    if frame is not None:
        name = next((t.name for t in threading.enumerate() if t.ident == ident), str(ident))
        now: list[FrameType] = []
        while frame is not None and len(now) < NOW_FRAMES:
            now.append(frame)
            frame = frame.f_back
        lines.append(f"  thread {name!r}, which checked it out, is now at:")
        for each in reversed(now):
            lines += _frame_lines(each.f_code, each.f_lineno)
        del now, frame
    return "\n".join(lines)


def _frame_lines(code: CodeType, line: int | None) -> list[str]:
    lines = [f'  File "{code.co_filename}", line {line}, in {code.co_name}']
    text = linecache.getline(code.co_filename, line).strip() if line else ""
    if text:
        lines.append(f"    {text}")
    return lines


def _line_of(code: CodeType, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno


@dataclass
class Recorder:
    """Everything one instrumented pool records, and the few reads the collector needs.

    Hot-path fields (``requested``, ``handed``, ``waits``, ``uses`` and the current ``Ledger``) are
    written without a lock by pool hooks. The rare events (connects, closes, failures, leaks) take
    ``_lock``; so does every read. Each request ends as exactly one of ``handed`` or ``failures``,
    counted before the request is complete, so ``pending = requested - handed - failures`` read in that
    order (the answers first) is never negative and counters never go down between scrapes.
    """

    name: str
    leak_threshold: float | None = None
    clock: Callable[[], float] = time.perf_counter
    requested: Tally = field(default_factory=Tally)
    handed: Tally = field(default_factory=Tally)
    waits: Samples = field(default_factory=Samples)
    uses: Samples = field(default_factory=Samples)
    creates: Samples = field(default_factory=Samples)
    by_holder: ByHolder = field(default_factory=lambda: ByHolder(Samples))
    leaked: set[object] = field(default_factory=set)
    failures: int = 0
    timeouts: int = 0
    connect_errors: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)
    leaks_total: int = 0
    internal_errors: int = 0
    min_idle: int = 0
    # Fork safety: checkouts counted when this process was forked, and those since from a pool created
    # before the fork (in the parent), whose connections parent and child then share.
    handed_at_fork: int = 0
    inherited_checkouts: int = 0
    _warned_inherited: bool = False
    _logged_internal: bool = False
    _ledger: Callable[[], Ledger | None] = lambda: None
    # Reentrant: the garbage collector can run a finalizer on a thread that holds this lock (a scrape
    # allocates while folding), and SQLAlchemy returns a dropped connection from one: the checkin and
    # close it records take this lock again.
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def ledger(self) -> Ledger:
        """The current pool's ledger (an empty one once that pool is gone)."""
        return self._ledger() or Ledger()

    def adopt(self, ledger: Ledger) -> None:
        """Record into ``ledger`` from now on (a new pool: the instrumented one, or its recreation)."""
        self._ledger = weakref.ref(ledger)

    # -- rare events (off the hot path) ------------------------------------------------------------

    def checkout_failed(self, exc: BaseException, started: float, *, timed_out: bool) -> None:
        """A caller's checkout raised: the pool timed out (``timed_out``), or connecting failed.

        A timed-out checkout is a wait like any other (the longest there is): it goes into the wait
        histogram, so an alert on slow checkouts sees an exhausted pool.
        """
        try:
            waited = self.clock() - started
            with self._lock:
                self.failures += 1
                if timed_out:
                    self.timeouts += 1
                else:
                    self.connect_errors[_connect_reason(exc)] += 1
            if timed_out:
                self.waits.append(waited)
        except Exception as error:
            self.internal_error(error)

    def connect_failed(self, exc: BaseException) -> None:
        """An attempt to open a connection failed outside a caller's checkout (housekeeping refill)."""
        with self._lock:
            self.connect_errors[_connect_reason(exc)] += 1

    def connected(self, seconds: float) -> None:
        self.creates.append(seconds)

    def close(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.closed[reason] += count

    def closes(self, reasons: tuple[str, ...]) -> dict[str, int]:
        with self._lock:
            return {reason: self.closed[reason] for reason in reasons}

    def closed_at_least(self, reason: str, count: int) -> None:
        """Closes worked out rather than counted (scraping side): ``reason`` counts at least
        ``count``; never lowered."""
        with self._lock:
            self.closed[reason] = max(self.closed[reason], count)

    def internal_error(self, exc: BaseException) -> None:
        """Count a failure of poolwatch's own hook code; log it once per pool. Never raises."""
        try:
            with self._lock:
                self.internal_errors += 1
                first = not self._logged_internal
                self._logged_internal = True
            if first:
                log.error(
                    "pool %s: instrumentation hook failed (counted in "
                    "poolwatch_instrumentation_errors_total, logged once): %s: %s",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
        except Exception:  # noqa: S110 - the last line of defence must not raise into the host
            pass

    def returned(self, key: object, held: float, holder: Holder | None, origin: Origin | None) -> None:
        """A connection held ``held`` seconds came back (from the checkin hook, with leak detection on,
        only when leaks are known or ``held`` is past ``leak_threshold``). One held too long that no
        scrape saw while it was out is counted and warned about now."""
        threshold = self.leak_threshold
        with self._lock:
            if key in self.leaked:
                self.leaked.discard(key)
                known = True
            elif threshold is not None and held > threshold:
                self.leaks_total += 1
                self.by_holder.leak(holder)
                known = False
            else:
                return
        if known:
            log.info("pool %s: leaked connection returned after %.1fs", self.name, held)
            return
        log.warning(
            "pool %s: connection held for %.1fs%s (leak_threshold %gs), returned before it was seen "
            "out; checked out at:\n%s",
            self.name,
            held,
            _by(holder),
            threshold,
            format_origin(origin),
        )

    # -- housekeeping ------------------------------------------------------------------------------

    def idle_since(self, key: object) -> float | None:
        """When an idle pool entry was last returned, pinged or opened; None if never seen."""
        return self.ledger.idle_since.get(key)

    def mark_idle(self, key: object) -> None:
        """``key`` is idle as of now (pinged, or opened by housekeeping)."""
        self.ledger.idle_since[key] = self.clock()

    def after_fork_in_child(self) -> None:
        """In a forked child (one thread): a lock of its own, and checkouts counted from here."""
        self._lock = threading.RLock()
        self.handed_at_fork = self.handed.value()
        self.inherited_checkouts = 0
        self._warned_inherited = False

    def _inherited_use(self, handed: int) -> int:
        """Checkouts in this process from a pool hooked in another one (created before a fork);
        warns once. Under ``_lock``."""
        ledger = self._ledger()
        if ledger is None or ledger.pid == os.getpid():
            return self.inherited_checkouts
        self.inherited_checkouts = max(self.inherited_checkouts, handed - self.handed_at_fork)
        if self.inherited_checkouts and not self._warned_inherited:
            self._warned_inherited = True
            log.warning(
                "pool %s was created in process %d and is used in process %d, forked from it: both "
                "now share its connections. Create the engine after the fork (gunicorn without "
                "--preload), or call engine.dispose(close=False) in the child first (gunicorn's "
                "post_fork hook); counted in poolwatch_pool_inherited_checkouts_total",
                self.name,
                ledger.pid,
                os.getpid(),
            )
        return self.inherited_checkouts

    # -- scraping side ---------------------------------------------------------------------------

    def pending(self) -> int:
        """Callers inside a checkout now (waiting in the queue, connecting or pre-pinging)."""
        with self._lock:
            return self._pending()

    def _pending(self) -> int:
        answered = self.handed.value() + self.failures
        return max(0, self.requested.value() - answered)

    def counts(self) -> Counts:
        """Callers waiting now, and the running totals the status page shows (no side effects: leaks
        are found by scrapes and housekeeping)."""
        with self._lock:
            return Counts(self._pending(), self.timeouts, len(self.leaked), self.leaks_total)

    def check_leaks(self) -> int:
        """Connections held past ``leak_threshold`` now; warn once for each new one."""
        if self.leak_threshold is None:
            return 0
        ledger = self.ledger
        now = self.clock()
        out = ledger.checked_out.copy()  # one C call: atomic under the GIL while hooks write
        held = [(key, started) for key, started in out.items() if now - started > self.leak_threshold]
        fresh: list[tuple[float, Origin | None, Holder | None]] = []
        with self._lock:
            for key, started in held:
                if key not in self.leaked:
                    self.leaked.add(key)
                    self.leaks_total += 1
                    holder = ledger.holders.get(key)
                    self.by_holder.leak(holder)
                    fresh.append((started, ledger.origins.get(key), holder))
            # Forget leaks whose connection went away without a checkin (detached, pool disposed).
            self.leaked.intersection_update(out.keys())  # in place: hooks hold this set
            self.by_holder.count_leaked(self.leaked, ledger.holders)
            count = len(self.leaked)
        for started, origin, holder in fresh:
            log.warning(
                "pool %s: connection held for %.1fs%s (leak_threshold %gs); checked out at:\n%s",
                self.name,
                now - started,
                _by(holder),
                self.leak_threshold,
                format_origin(origin),
            )
        return count

    def fold(self) -> None:
        with self._lock:
            self.waits.fold()
            self.uses.fold()
            self.creates.fold()
            self.by_holder.fold()

    def carry(self, previous: Recorder) -> None:
        """Go on from ``previous``'s counters and histograms: the recorder of a pool that replaces
        another under the same name (a target rebuilt on reload), so its counters never go down.
        Requests still waiting in the old pool are not carried: they went with it. Call it before
        the new pool is scraped; the old one should be out of use (disposed)."""
        previous.fold()
        with previous._lock:
            handed, failures = previous.handed.value(), previous.failures
            counts = (previous.timeouts, previous.leaks_total, previous.internal_errors)
            connect_errors, closed = Counter(previous.connect_errors), Counter(previous.closed)
        with self._lock:
            self.handed.carry(handed)
            self.requested.carry(handed + failures)
            self.failures += failures
            self.timeouts += counts[0]
            self.leaks_total += counts[1]
            self.internal_errors += counts[2]
            self.connect_errors.update(connect_errors)
            self.closed.update(closed)
            for mine, theirs in (
                (self.waits, previous.waits),
                (self.uses, previous.uses),
                (self.creates, previous.creates),
            ):
                mine.carry(theirs)
            self.by_holder.carry(previous.by_holder)

    def snapshot(self) -> Snapshot:
        """Every counter and histogram value, consistent with each other, for one scrape."""
        leaked = self.check_leaks()
        self.fold()
        with self._lock:
            checkouts = self.handed.value()
            return Snapshot(
                pending=self._pending(),
                checkouts=checkouts,
                timeouts=self.timeouts,
                connect_errors=dict(self.connect_errors),
                closed=dict(self.closed),
                leaked=leaked,
                leaks_total=self.leaks_total,
                internal_errors=self.internal_errors,
                waits=self.waits.cumulative(),
                uses=self.uses.cumulative(),
                creates=self.creates.cumulative(),
                min_idle=self.min_idle,
                inherited_checkouts=self._inherited_use(checkouts),
                holder_uses=self.by_holder.cumulative(),
                leaked_by_holder=self.by_holder.leaked_now(),
                leaks_by_holder=self.by_holder.leaks_total(),
            )


@dataclass(frozen=True, slots=True)
class Counts:
    pending: int
    timeouts: int
    leaked: int
    leaks_total: int


@dataclass(frozen=True)
class Snapshot:
    pending: int
    checkouts: int
    timeouts: int
    connect_errors: dict[str, int]
    closed: dict[str, int]
    leaked: int
    leaks_total: int
    internal_errors: int
    waits: tuple[list[tuple[str, float]], float]
    uses: tuple[list[tuple[str, float]], float]
    creates: tuple[list[tuple[str, float]], float]
    min_idle: int
    inherited_checkouts: int = 0
    # By bounded holder label (never the empty label, which the unlabelled values above stand for).
    holder_uses: list[tuple[str, tuple[list[tuple[str, float]], float]]] = field(default_factory=list)
    leaked_by_holder: dict[str, int] = field(default_factory=dict)
    leaks_by_holder: dict[str, int] = field(default_factory=dict)


def _by(holder: Holder | None) -> str:
    label = "" if holder is None else holder.label
    return f" by {label}" if label else ""


def _connect_reason(exc: BaseException) -> str:
    reason = reason_of(exc)
    return reason if reason in CONNECT_ERROR_REASONS else "other"
