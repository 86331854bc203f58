"""Observing another thread without sleeping: where it is, from its current Python frame."""

from __future__ import annotations

import linecache
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading


def stack(thread: threading.Thread) -> list[tuple[str, str]]:
    """``(function, source line)`` of each frame the thread is in now, innermost first; [] once it
    has ended."""
    frame = sys._current_frames().get(thread.ident or -1)
    found = []
    while frame is not None:
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        found.append((frame.f_code.co_name, line))
        frame = frame.f_back
    return found


def acquiring(thread: threading.Thread, inside: str, lock: str = "_lock") -> bool:
    """The thread is inside function ``inside`` and its innermost frame is at a line taking an
    attribute named ``lock`` (``with self._lock:``, or ``Condition.__enter__``'s
    ``self._lock.__enter__()``): with that lock held elsewhere, it is blocked there."""
    frames = stack(thread)
    return bool(frames) and lock in frames[0][1] and any(name == inside for name, _ in frames)
