"""What the adapters for psycopg_pool, asyncpg, psycopg2.pool and redis.asyncio share.

Each of those pools hands connections out through one method and takes them back through another
(``getconn`` / ``putconn``, a queue's ``get`` / ``put_nowait``, ``get_connection`` / ``release``).
``checkout_hooks`` and ``async_checkout_hooks`` build the hooks that shadow such a pair as instance
attributes: each looks the pool's own method up on the pool's class when it runs (a later patch is
honoured, the class stays the application's), records into the pool's ``Recorder`` and ``Ledger``
without a lock, and never raises into the application except the pool's own error. ``register``
checks what every adapter checks before anything changes, then adds the pool to its registry's
collector.
"""

from __future__ import annotations

import time
import weakref
from _thread import get_ident
from sys import _getframe as getframe
from typing import TYPE_CHECKING, Any, Protocol

from poolwatch.instrument.collector import PoolSource, collector_for
from poolwatch.instrument.holder import current as current_holder
from poolwatch.instrument.holder import named as named_holders
from poolwatch.instrument.recorder import Recorder

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from prometheus_client.registry import CollectorRegistry

    from poolwatch.instrument.recorder import Ledger


class Instrumentation(PoolSource, Protocol):
    """An adapter's instrumentation of one pool: what the collector reads, and how to stop."""

    name: str

    def remove(self) -> None:
        """Stop exporting this pool (hooks stay, recording into a recorder nobody reads)."""


def check_threshold(function: str, name: str, leak_threshold: float | None) -> None:
    if leak_threshold is not None and not leak_threshold > 0:
        raise ValueError(f"poolwatch.{function}({name!r}): leak_threshold must be > 0")


def new_recorder(
    name: str,
    leak_threshold: float | None,
    clock: Callable[[], float] = time.perf_counter,
    counts_from: Recorder | None = None,
) -> Recorder:
    recorder = Recorder(name, leak_threshold=leak_threshold, clock=clock)
    if counts_from is not None:  # before the collector can read it: never a drop to 0
        recorder.carry(counts_from)
    return recorder


def shadow(obj: object, hooks: dict[str, Callable[..., Any]]) -> None:
    """Set ``hooks`` as instance attributes of ``obj``, one ``setattr`` each.

    Never through ``vars(obj)``: on CPython 3.11+ an instance keeps its attributes in a compact array
    laid out by its class until its ``__dict__`` is asked for; asking builds a real dict, and from
    then on every attribute the pool's own code reads on itself (``self._lock``, ``self._pool``...)
    and every method it calls on itself misses the interpreter's specialised fast paths. On
    psycopg2's pool that alone cost ~6,000 instructions a cycle, more than the hooks' own work.
    (The names join the class's shared attribute layout: other instances only get empty slots.)
    """
    for name, hook in hooks.items():
        setattr(obj, name, hook)


def undone_on_failure(obj: object, names: Iterable[str], install: Callable[[], None]) -> Callable[[], None]:
    """``install`` (which shadows methods ``names`` on ``obj``), as a hook that takes every one of them
    off ``obj`` again if it fails, so a refused pool is left as it was."""

    def hook() -> None:
        try:
            install()
        except BaseException:
            for name in names:
                vars(obj).pop(name, None)
            raise

    return hook


def register(registry: CollectorRegistry | None, instrumentation: Any, hook: Callable[[], None]) -> None:
    """Add ``instrumentation`` to ``registry``'s collector (``ValueError`` if its name is taken,
    nothing changed), then run ``hook`` (which changes the pool); undo the registration if it fails.
    ``instrumentation.remove()`` stops the export afterwards."""
    collector = collector_for(registry)
    name = instrumentation.name
    collector.add(name, instrumentation)
    instrumentation.registry_remove = lambda: collector.remove(name, instrumentation)
    try:
        hook()
    except BaseException:
        collector.remove(name, instrumentation)
        raise


class Base:
    """The parts every adapter's instrumentation class shares."""

    def __init__(self, name: str, recorder: Recorder, server: str = "") -> None:
        self.name = name
        self.recorder = recorder
        self.server = server  # the ``server`` label (from the pool's connection parameters, or ``server=``)
        self.registry_remove: Callable[[], None] | None = None

    def remove(self) -> None:
        if self.registry_remove is not None:
            self.registry_remove()
            self.registry_remove = None


def failed(
    recorder: Recorder, exc: BaseException, started: float, exhausted: Callable[[BaseException], bool]
) -> None:
    """A checkout raised: the pool was exhausted (a timeout), or connecting failed."""
    try:
        recorder.checkout_failed(exc, started, timed_out=exhausted(exc))
    except Exception as error:
        recorder.internal_error(error)


def checkout_hooks(  # noqa: C901, PLR0915 - unrolled on purpose: each branch saves work per checkout
    get_name: str,
    put_name: str,
    owner: Callable[[], Any],
    recorder: Recorder,
    ledger: Ledger,
    *,
    exhausted: Callable[[BaseException], bool],
    key: Callable[[Any], object] | None,
    library_dir: str,
    put_param: str = "connection",
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Hooks for a synchronous pair: ``get_name`` / ``put_name`` name the pool class's own methods
    (looked up on the class at each call; ``put_param``, the name of the connection parameter of the
    put method), ``owner()`` gives the pool (weakly held),
    ``key(connection)`` the connection's ledger key (the connection itself when None; a C callable
    such as ``weakref.ref`` costs no frame). With ``weakref.ref`` as the key, the return hook finds
    the key as the connection's ``__weakref__``: the callback-less reference CPython keeps first
    and shares, which the ledger holds while the connection is out (an attribute read, where a
    call to ``weakref.ref`` costs ~700 instructions).

    Every bytecode here is paid on every cycle: no helper calls on the way, only what the usual path
    touches as a closure variable (each is copied into the hook's frame per call; rare paths go
    through ``recorder``), and the leak and no-leak variants of the get hook are separate functions
    (the leak variant captures its origin inline)."""
    clock = recorder.clock
    count = next
    requested = recorder.requested.counter
    handed = recorder.handed.counter
    wait = recorder.waits.append
    use = recorder.uses.append
    checked_out = ledger.checked_out
    take = checked_out.pop
    origins = ledger.origins
    leaked = recorder.leaked
    tracking = recorder.leak_threshold is not None
    threshold = recorder.leak_threshold or 0.0
    holders = ledger.holders
    holder_now = current_holder
    holder_named = named_holders
    frame = getframe
    ident = get_ident
    weak = key is weakref.ref

    def get(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        count(requested)
        this = owner()
        try:
            if args or kwargs:
                connection = getattr(type(this), get_name)(this, *args, **kwargs)
            else:  # the usual call: no argument tuple and dict to forward
                connection = getattr(type(this), get_name)(this)
        except BaseException as exc:
            failed(recorder, exc, start, exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection if key is None else key(connection)
            checked_out[held] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[held] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    def get_tracking_leaks(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        count(requested)
        this = owner()
        try:
            if args or kwargs:
                connection = getattr(type(this), get_name)(this, *args, **kwargs)
            else:
                connection = getattr(type(this), get_name)(this)
        except BaseException as exc:
            failed(recorder, exc, start, exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection if key is None else key(connection)
            # capture_origin_outside(), inlined (a call costs a frame).
            caller = frame(1)
            # The file first: reading f_back builds the caller's caller's frame object.
            while caller.f_code.co_filename.startswith(library_dir) and caller.f_back is not None:
                caller = caller.f_back
            origins[held] = (caller.f_code, caller.f_lasti, ident())
            checked_out[held] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[held] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    def put(connection: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            # With weak keys, the reference the connection was filed under (no new one).
            held = connection.__weakref__ if weak else (connection if key is None else key(connection))
            started = take(held, None)  # None: not handed out through this hook
            if started is not None:
                duration = clock() - started
                holder = holders.pop(held, None) if holders else None
                if holder is None:
                    use(duration)
                else:
                    recorder.by_holder.hold((holder, duration))
                if tracking:
                    origin = origins.pop(held, None)
                    if leaked or duration > threshold:  # known leaks, or one no scrape saw out
                        recorder.returned(held, duration, holder, origin)
        except Exception as exc:
            recorder.internal_error(exc)
        this = owner()
        if args or kwargs:
            return getattr(type(this), put_name)(this, connection, *args, **kwargs)
        return getattr(type(this), put_name)(this, connection)

    return (get_tracking_leaks if tracking else get), named_first(put, put_param)


def named_first(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``function`` with its first parameter renamed ``name``: a put hook takes the connection by the
    name the library's method gives it (``pool.putconn(conn=...)``), at no cost per call (a wrapper
    would add a frame)."""
    code = function.__code__
    if code.co_varnames[0] != name:
        function.__code__ = code.replace(co_varnames=(name, *code.co_varnames[1:]))
    return function


def async_checkout_hooks(  # noqa: C901, PLR0915 - unrolled on purpose, as checkout_hooks
    get_name: str,
    put_name: str,
    owner: Callable[[], Any],
    recorder: Recorder,
    ledger: Ledger,
    *,
    exhausted: Callable[[BaseException], bool],
    key: Callable[[Any], object] | None,
    library_dir: str,
    put_is_async: bool,
    put_param: str = "connection",
) -> tuple[Callable[..., Awaitable[Any]], Callable[..., Any]]:
    """As ``checkout_hooks``, for a pool whose get is a coroutine (and its put too, with
    ``put_is_async``)."""
    clock = recorder.clock
    count = next
    requested = recorder.requested.counter
    handed = recorder.handed.counter
    wait = recorder.waits.append
    use = recorder.uses.append
    checked_out = ledger.checked_out
    take = checked_out.pop
    origins = ledger.origins
    leaked = recorder.leaked
    tracking = recorder.leak_threshold is not None
    threshold = recorder.leak_threshold or 0.0
    holders = ledger.holders
    holder_now = current_holder
    holder_named = named_holders
    frame = getframe
    ident = get_ident
    weak = key is weakref.ref

    async def get(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        count(requested)
        this = owner()
        try:
            if args or kwargs:
                connection = await getattr(type(this), get_name)(this, *args, **kwargs)
            else:
                connection = await getattr(type(this), get_name)(this)
        except BaseException as exc:
            failed(recorder, exc, start, exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection if key is None else key(connection)
            checked_out[held] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[held] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    async def get_tracking_leaks(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        count(requested)
        this = owner()
        try:
            if args or kwargs:
                connection = await getattr(type(this), get_name)(this, *args, **kwargs)
            else:
                connection = await getattr(type(this), get_name)(this)
        except BaseException as exc:
            failed(recorder, exc, start, exhausted)
            raise
        now = clock()
        count(handed)
        wait(now - start)
        try:
            held = connection if key is None else key(connection)
            # capture_origin_outside(), inlined (a call costs a frame).
            caller = frame(1)
            # The file first: reading f_back builds the caller's caller's frame object.
            while caller.f_code.co_filename.startswith(library_dir) and caller.f_back is not None:
                caller = caller.f_back
            origins[held] = (caller.f_code, caller.f_lasti, ident())
            checked_out[held] = now
            if holder_named[0] and (holder := holder_now()) is not None:
                holders[held] = holder
        except Exception as exc:
            recorder.internal_error(exc)
        return connection

    # The put hooks record inline (not through a shared helper: a call costs a frame).
    async def put_async(connection: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            # With weak keys, the reference the connection was filed under (no new one).
            held = connection.__weakref__ if weak else (connection if key is None else key(connection))
            started = take(held, None)  # None: not handed out through this hook
            if started is not None:
                duration = clock() - started
                holder = holders.pop(held, None) if holders else None
                if holder is None:
                    use(duration)
                else:
                    recorder.by_holder.hold((holder, duration))
                if tracking:
                    origin = origins.pop(held, None)
                    if leaked or duration > threshold:  # known leaks, or one no scrape saw out
                        recorder.returned(held, duration, holder, origin)
        except Exception as exc:
            recorder.internal_error(exc)
        this = owner()
        if args or kwargs:
            return await getattr(type(this), put_name)(this, connection, *args, **kwargs)
        return await getattr(type(this), put_name)(this, connection)

    def put(connection: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            # With weak keys, the reference the connection was filed under (no new one).
            held = connection.__weakref__ if weak else (connection if key is None else key(connection))
            started = take(held, None)
            if started is not None:
                duration = clock() - started
                holder = holders.pop(held, None) if holders else None
                if holder is None:
                    use(duration)
                else:
                    recorder.by_holder.hold((holder, duration))
                if tracking:
                    origin = origins.pop(held, None)
                    if leaked or duration > threshold:
                        recorder.returned(held, duration, holder, origin)
        except Exception as exc:
            recorder.internal_error(exc)
        this = owner()
        if args or kwargs:
            return getattr(type(this), put_name)(this, connection, *args, **kwargs)
        return getattr(type(this), put_name)(this, connection)

    return (get_tracking_leaks if tracking else get), named_first(
        put_async if put_is_async else put, put_param
    )


def timed_connect(
    recorder: Recorder, connect: Callable[..., Any], *, count_failures: bool = True
) -> Callable[..., Any]:
    """A synchronous connect function that records its time, or its failure by reason (unless
    ``count_failures`` is off: the checkout hook that called it counts the failure)."""
    clock = recorder.clock

    def connect_timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            connection = connect(*args, **kwargs)
        except BaseException as exc:
            if count_failures:
                _connect_failed(recorder, exc)
            raise
        recorder.connected(clock() - start)
        return connection

    return connect_timed


def async_timed_connect(
    recorder: Recorder, connect: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """As ``timed_connect``, for a coroutine function."""
    clock = recorder.clock

    async def connect_timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            connection = await connect(*args, **kwargs)
        except BaseException as exc:
            _connect_failed(recorder, exc)
            raise
        recorder.connected(clock() - start)
        return connection

    return connect_timed


def _connect_failed(recorder: Recorder, exc: BaseException) -> None:
    if not isinstance(exc, Exception):
        return  # cancelled, interrupted: not a connect error
    try:
        recorder.connect_failed(exc)
    except Exception as error:
        recorder.internal_error(error)
