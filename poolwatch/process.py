"""What ``poolwatch run`` does to its own process, which it owns (never done in an application).

The mmap threshold and the SDK are about resident memory (a daemon watching 100 targets should not
need more than 100 MB); settling the heap is about the garbage collector's full passes.
"""

from __future__ import annotations

import gc
import sys
from typing import Final

# glibc's mallopt parameter (malloc.h) and the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 128 * 1024


def pin_mmap_threshold() -> bool:
    """Give every allocation of 128 KiB or more its own mapping, returned to the system when freed.

    glibc starts with that threshold but raises it to the size of each such block freed (up to
    32 MiB), after which a scrape's large bodies (1.7 MB at 100 targets, made and freed on every
    scrape) come from the heap and leave it fragmented: about 3 MB more resident memory at 100
    targets. Setting the threshold turns that adjustment off. Only with glibc; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # noqa: PLC0415 - only here: the library never loads it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def hide_sdk() -> None:
    """Keep the OpenTelemetry SDK out of the process unless ``otlp:`` asks for it.

    redis-py 8 imports the SDK's metrics package whenever it is installed, for an observability
    feature poolwatch does not use: 2.7 MB of resident memory in a daemon that never pushes. An
    import of a module that ``sys.modules`` maps to None fails with ImportError, which redis-py
    takes for "not installed". Called before the configuration is read (checking a Redis URL loads
    redis-py); ``show_sdk`` undoes it when the settings have ``otlp:`` (a changed ``otlp:`` takes
    effect after a restart, so nothing needs the SDK later)."""
    sys.modules.setdefault("opentelemetry.sdk", None)  # type: ignore[arg-type]


def show_sdk() -> None:
    """Undo ``hide_sdk``: the SDK imports as usual again."""
    if "opentelemetry.sdk" in sys.modules and sys.modules["opentelemetry.sdk"] is None:
        del sys.modules["opentelemetry.sdk"]


def settle_heap() -> int:
    """Leave what the process holds now out of the garbage collector's passes (``gc.freeze()``),
    after collecting what is garbage already. Returns how many objects that froze.

    A full collection (the oldest generation) walks every object the collector tracks: at 100 +
    10 targets about 140,000 (the libraries' modules, classes and functions, and every target's
    engine, pool, client, metrics and jobs), 60-100 ms of CPU on whichever thread allocates when one
    comes due, a scrape or a job, about once a minute. They live until the process ends or a reload
    drops their target; frozen, a full collection walks only what came since (a few thousand
    objects: 3-11 ms measured at 100 + 10 targets). What dies by reference counting is freed all
    the same; only reference cycles among frozen objects wait for ``thaw_heap()``."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Give the frozen objects back to the collector (``gc.unfreeze()``): before a reload drops
    targets, so that the next collection frees theirs, cycles included."""
    gc.unfreeze()
