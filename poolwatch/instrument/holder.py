"""Who holds a pool's connections: the current holder in a context variable, and its bounded label.

A holder is what the application is doing while it has a connection checked out: an HTTP route
template (set by the middleware in ``poolwatch/middleware.py``) or a job name
(``poolwatch.holder("nightly-report")``). The checkout hooks read the context variable once (one C
call) and keep the ``Holder`` object with the connection; its label is worked out off the checkout
path, when the connection comes back or a scrape looks. A request's route is known only after the
framework has routed it, which is after the middleware ran, so a request's ``Holder`` resolves its
label lazily and keeps it once the request is over (dropping the request it read it from).

Labels are bounded per pool (``HolderLabels``): the first ``limit`` holders seen, the longest holding
first among those seen together, keep a label of their own; every other holder is ``other``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import Counter, deque
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from typing_extensions import Self

    from poolwatch.instrument.recorder import Samples

P = ParamSpec("P")
R = TypeVar("R")

# Holder labels each pool keeps apart; every further holder is counted under OTHER.
HOLDER_LIMIT: Final = 20
OTHER: Final = "other"
# Durations kept between two scrapes, as the recorder's other samples (recorder.SAMPLE_LIMIT).
SAMPLE_LIMIT: Final = 65_536
# Longest label kept (a job name or route template beyond that is cut).
MAX_LABEL: Final = 120


class Holder:
    """What holds the connections checked out in this context: a fixed name, or a request whose
    route template is resolved when first asked for (``resolve``: empty while not known yet) and
    kept from the first time it is known, or once ``settle()`` runs."""

    __slots__ = ("_label", "_resolve")

    def __init__(self, label: str | None = None, resolve: Callable[[], str] | None = None) -> None:
        self._label = None if label is None else label[:MAX_LABEL]
        self._resolve = resolve

    @property
    def label(self) -> str:
        if self._label is not None:
            return self._label
        resolve = self._resolve
        if resolve is None:
            return ""
        try:
            label = resolve()[:MAX_LABEL]
        except Exception:  # a half-built request: not worth failing a scrape or a warning for
            return ""
        if label:  # known for good: keep it, and let go of what it was read from
            self._label, self._resolve = label, None
        return label

    def settle(self, fallback: str = "") -> None:
        """Fix the label now (``fallback`` if it cannot be known) and drop what it was read from
        (called when the request is over)."""
        if self._label is None:
            self._label = self.label or fallback
        self._resolve = None

    def __repr__(self) -> str:
        return f"Holder({self.label!r})"


_current: ContextVar[Holder | None] = ContextVar("poolwatch_holder", default=None)
# The checkout hooks call this: ContextVar.get, one C call.
current: Final = _current.get
# ``[True]`` once any holder was named in this process (``holder()`` built, ``set_holder`` called):
# until then the checkout hooks of the other pool kinds skip ``current()`` (~170 instructions of a
# cycle). Set once, never cleared; a list, so hooks read the one object every setter writes.
named: Final[list[bool]] = [False]


def set_holder(holder: Holder | None) -> Token[Holder | None]:
    """Make ``holder`` the current one in this context; ``reset_holder(token)`` undoes it."""
    named[0] = True
    return _current.set(holder)


def reset_holder(token: Token[Holder | None]) -> None:
    _current.reset(token)


class holder:  # noqa: N801 - used like contextlib.suppress: a function to the reader
    """Name what holds the connections checked out inside a block or a function.

    ``with poolwatch.holder("nightly-report"): ...``, ``async with`` likewise, or as a decorator on
    a plain or ``async`` function (each call sets and restores the holder, so one decorated
    function may run in many threads and tasks at once). As a context manager, one object serves
    one block at a time per context; nested blocks restore the outer holder.
    """

    __slots__ = ("_holder", "_tokens")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"poolwatch.holder: the name must be a non-empty string, not {name!r}")
        self._holder = Holder(name.strip())
        named[0] = True
        self._tokens: list[Token[Holder | None]] = []

    @property
    def name(self) -> str:
        return self._holder.label

    def __enter__(self) -> Self:
        self._tokens.append(_current.set(self._holder))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        named = self._holder
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                token = _current.set(named)
                try:
                    return await func(*args, **kwargs)
                finally:
                    _current.reset(token)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            token = _current.set(named)
            try:
                return func(*args, **kwargs)
            finally:
                _current.reset(token)

        return run

    def __repr__(self) -> str:
        return f"poolwatch.holder({self.name!r})"


def check_holder_limit(limit: object, where: str) -> None:
    """A ``holders=`` argument: a whole number, 0 or more (0: every holder is ``other``)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"{where}: holders must be a whole number >= 0, not {limit!r}")


class HolderLabels:
    """The bounded label of each holder of one pool: ``limit`` labels of their own, then ``other``.

    A label once given stays for the life of the pool's recorder, so each series stays monotonic.
    Callers serialise (the recorder's lock).
    """

    __slots__ = ("_given", "limit")

    def __init__(self, limit: int = HOLDER_LIMIT) -> None:
        if limit < 0:
            raise ValueError(f"the holder label limit must be >= 0, not {limit}")
        self.limit = limit
        self._given: set[str] = set()

    def bound(self, label: str) -> str:
        """``label`` itself if it has (or can still get) a label of its own, else ``other``."""
        if not label or label in self._given:
            return label
        if len(self._given) < self.limit:
            self._given.add(label)
            return label
        return OTHER

    def rank(self, hold_times: dict[str, float]) -> dict[str, str]:
        """Bound the labels of several holders seen together, the longest holding first."""
        ordered = sorted(hold_times.items(), key=lambda item: (-item[1], item[0]))
        return {label: self.bound(label) for label, _ in ordered}


class ByHolder:
    """Use times and leaks of one pool by bounded holder label (connections with a holder only).

    The checkin hook appends ``(holder, seconds held)`` to ``held`` (``hold``: a bound
    ``deque.append``, no lock); ``fold()`` on the scraping side resolves the labels and files the
    durations into one histogram per label. Leaks are counted by the recorder under its lock.
    """

    __slots__ = ("_leaked_now", "_make", "held", "hold", "labels", "leaks", "sinks", "uses")

    def __init__(self, make_samples: Callable[[], Samples], limit: int = HOLDER_LIMIT) -> None:
        self._make = make_samples
        self.held: deque[tuple[Holder, float]] = deque(maxlen=SAMPLE_LIMIT)
        self.hold: Callable[[tuple[Holder, float]], None] = self.held.append
        self.labels = HolderLabels(limit)
        self.uses: dict[str, Samples] = {}
        self.leaks: Counter[str] = Counter()
        self._leaked_now: Counter[str] = Counter()
        # Whatever else takes the durations by label as they are filed (OpenTelemetry's use_time,
        # poolwatch.otel); scraping side only. Replaced whole, never changed in place.
        self.sinks: tuple[Callable[[str, list[float]], object], ...] = ()

    def fold(self) -> None:
        """File the durations held since the last fold under their labels (scraping side)."""
        popleft = self.held.popleft
        pending: dict[str, list[float]] = {}
        with contextlib.suppress(IndexError):
            for _ in range(len(self.held)):
                holder, seconds = popleft()
                pending.setdefault(holder.label or OTHER, []).append(seconds)
        if not pending:
            return
        bounded = self.labels.rank({label: sum(times) for label, times in pending.items()})
        for label, times in pending.items():
            samples = self.uses.get(bounded[label])
            if samples is None:
                samples = self.uses[bounded[label]] = self._make()
            samples.samples.extend(times)
            for sink in self.sinks:
                sink(bounded[label], times)
        for samples in self.uses.values():
            samples.fold()

    def leak(self, holder: Holder | None) -> None:
        """Count a leak of a connection held by ``holder`` (None: no holder; counted unlabelled)."""
        if holder is not None:
            self.leaks[self.labels.bound(holder.label or OTHER)] += 1

    def count_leaked(self, leaked: set[object], holders: dict[object, Holder]) -> None:
        """Remember how many of the connections leaked now each label holds."""
        now: Counter[str] = Counter()
        for key in leaked:
            holder = holders.get(key)
            if holder is not None:
                now[self.labels.bound(holder.label or OTHER)] += 1
        self._leaked_now = now

    def leaked_now(self) -> dict[str, int]:
        """Leaked now by label, 0 for every label that ever leaked (a gauge that went back to 0)."""
        return {label: self._leaked_now.get(label, 0) for label in sorted(self.leaks)}

    def leaks_total(self) -> dict[str, int]:
        return dict(sorted(self.leaks.items()))

    def cumulative(self) -> list[tuple[str, tuple[list[tuple[str, float]], float]]]:
        return [(label, self.uses[label].cumulative()) for label in sorted(self.uses)]

    def carry(self, previous: ByHolder) -> None:
        """Go on from ``previous``'s histograms and leak counts (a pool replaced under its name)."""
        for label, theirs in previous.uses.items():
            bounded = self.labels.bound(label)
            mine = self.uses.get(bounded)
            if mine is None:
                mine = self.uses[bounded] = self._make()
            mine.carry(theirs)
        for label, count in previous.leaks.items():
            self.leaks[self.labels.bound(label)] += count
