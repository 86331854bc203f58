"""A pytest plugin for another project's test suite: instrument every pool that suite builds.

Loaded with ``-p poolwatch_everywhere`` (this directory on PYTHONPATH) into SQLAlchemy's or redis-py's
own tests. Every QueuePool (engines' and those built directly, AsyncAdaptedQueuePool included) and
every redis-py ConnectionPool / BlockingConnectionPool is instrumented as soon as its constructor
returns, with leak detection on, on one registry that a thread scrapes (both exposition paths) for
the whole run. At the end it writes what it saw to ``$POOLWATCH_CONFORMANCE_REPORT`` (JSON): pools
instrumented, pools it could not instrument (with why) and poolwatch's internal errors.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import os
import threading
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

import poolwatch
from poolwatch.exposition import Renderer

LEAK_THRESHOLD = 5.0  # seconds: leak detection runs on every scrape; few tests hold a connection longer
# Seconds between scrapes: far more often than Prometheus (15 s), yet leaving the GIL to the suite's
# own threads (a test that gives another thread 10 ms to take a lock loses that race to a thread
# scraping without pause, with or without poolwatch).
SCRAPE_INTERVAL = float(os.environ.get("POOLWATCH_CONFORMANCE_SCRAPE_INTERVAL", "0.05"))

_registry = CollectorRegistry()
_names = itertools.count()
_recorders: list[Any] = []
_refused: list[str] = []
_depth = threading.local()  # constructors under way on this thread: instrument when the outermost ends
_stop = threading.Event()
_scrapes = itertools.count()
_scrape_errors: list[str] = []


def _instrument(pool: Any, how: Any) -> None:
    name = f"pool-{next(_names)}"
    try:
        handle = how(pool, name=name, registry=_registry, leak_threshold=LEAK_THRESHOLD)
    except Exception as exc:
        _refused.append(f"{type(pool).__name__}: {type(exc).__name__}: {exc}")
        return
    _recorders.append(handle.recorder)
    weakref.finalize(pool, handle.remove)  # a dropped pool leaves the registry


def _wrap_init(cls: type, how: Any, *, skip: Any = None) -> None:
    """Instrument each instance of ``cls`` when its outermost constructor returns.

    The wrapper keeps the constructor's parameter list: SQLAlchemy's create_engine() reads it to
    know which keyword arguments the pool class takes.
    """
    original = cls.__init__  # type: ignore[misc]

    def after(pool: Any, kwargs: dict[str, Any]) -> None:
        _depth.n -= 1
        if _depth.n == 0 and (skip is None or not skip(pool, kwargs)):
            _instrument(pool, how)

    def enter() -> None:
        _depth.n = getattr(_depth, "n", 0) + 1

    def failed() -> None:
        _depth.n -= 1

    namespace: dict[str, Any] = {"_original": original, "_after": after, "_enter": enter, "_failed": failed}
    params, passed = [], []
    star = False
    for index, parameter in enumerate(inspect.signature(original).parameters.values()):
        default = ""
        if parameter.default is not parameter.empty:
            namespace[f"_default{index}"] = parameter.default
            default = f"=_default{index}"
        name = parameter.name
        if parameter.kind is parameter.VAR_POSITIONAL:
            params.append(f"*{name}")
            passed.append(f"*{name}")
            star = True
        elif parameter.kind is parameter.VAR_KEYWORD:
            params.append(f"**{name}")
            passed.append(f"**{name}")
        elif parameter.kind is parameter.KEYWORD_ONLY:
            if not star:
                params.append("*")
                star = True
            params.append(f"{name}{default}")
            passed.append(f"{name}={name}")
        else:
            params.append(f"{name}{default}")
            passed.append(name)
    names = [p.name for p in inspect.signature(original).parameters.values()]
    keywords = (
        names[-1]
        if inspect.signature(original).parameters[names[-1]].kind is inspect.Parameter.VAR_KEYWORD
        else None
    )
    source = (
        f"def __init__({', '.join(params)}):\n"
        f"    _enter()\n"
        f"    try:\n"
        f"        _original({', '.join(passed)})\n"
        f"    except BaseException:\n"
        f"        _failed()\n"
        f"        raise\n"
        f"    _after({names[0]}, {keywords or '{}'})\n"
    )
    exec(source, namespace)  # a test harness building a signature-preserving wrapper
    wrapper = namespace["__init__"]
    wrapper.__wrapped__ = original
    cls.__init__ = wrapper  # type: ignore[misc]


def _scrape() -> None:
    renderer = Renderer(_registry)
    try:
        while not _stop.wait(SCRAPE_INTERVAL):
            generate_latest(_registry)
            renderer.render()
            next(_scrapes)
    except Exception as exc:  # reported: a scrape must never fail
        _scrape_errors.append(f"{type(exc).__name__}: {exc}")


def pytest_configure(config: Any) -> None:
    with contextlib.suppress(ImportError):
        from sqlalchemy.pool import QueuePool

        # A pool that engine.dispose() recreates (Pool.recreate passes the old pool's dispatch) is
        # hooked by the instrumentation of the pool it replaces.
        _wrap_init(QueuePool, poolwatch.instrument, skip=lambda _pool, kwargs: kwargs.get("_dispatch"))
    with contextlib.suppress(ImportError):
        import redis

        for cls in (redis.ConnectionPool, redis.BlockingConnectionPool):
            _wrap_init(cls, poolwatch.instrument_redis)
    threading.Thread(target=_scrape, name="poolwatch-conformance-scraper", daemon=True).start()


def pytest_unconfigure(config: Any) -> None:
    _stop.set()
    path = os.environ.get("POOLWATCH_CONFORMANCE_REPORT")
    if not path:
        return
    report = {
        "instrumented": len(_recorders),
        "refused": _refused,
        "internal_errors": sum(recorder.internal_errors for recorder in _recorders),
        "checkouts": sum(recorder.handed.value() for recorder in _recorders),
        "scrapes": next(_scrapes),
        "scrape_errors": _scrape_errors[:20],
    }
    with open(path, "w") as out:  # noqa: PTH123
        json.dump(report, out)
