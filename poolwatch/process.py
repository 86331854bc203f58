"""What ``poolwatch run`` does to its own process, which it owns (never done in an application).

Both are about resident memory: a daemon watching 100 targets should not need more than 100 MB.
"""

from __future__ import annotations

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
