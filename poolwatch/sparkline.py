"""The status page's sparklines: inline SVG lines kept from page to page, so a sample costs a move or two.

A line is drawn in the series' own units: one unit per history step across (x is the step index
``at // step``, counted from an origin before the first sample) and the value itself up. The
``viewBox`` does the scaling to the 160 x 28 pixel box (``preserveAspectRatio="none"``;
``vector-effect:non-scaling-stroke`` keeps the stroke even), so a new peak changes the ``viewBox``,
never a point, and the time passing changes only the ``viewBox``'s left edge and width. The path is
relative moves (``l dx dy``, ``h dx`` for a level stretch) after one absolute first point.

Each series' moves are remembered per slot (target and series) with the sample lists they were
drawn from. The status document shares those lists until the next sample; a later list is the earlier
one with the oldest rows dropped, the newest row perhaps merged with a later sample, and new rows
appended. Only the changed moves are formatted again: two list comparisons and a slice at C speed,
then a ``str.join``. Anything else (a rebuilt target, a history that jumped) draws the line afresh.

The cache holds one entry per slot; the memory per entry is a list of pointers to shared move
strings (``_move`` keeps the common ones), about 1 KB for 91 samples.
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
from typing import Final, NamedTuple

HEIGHT: Final = 28  # pixels, as in the style sheet: the margin below is in the same proportion
MARGIN: Final = 1.5 / (HEIGHT - 3)  # of the top value, above and below the line


class Frame(NamedTuple):
    """Where a target's sparklines are drawn. x is counted in steps from ``origin`` (a step index), so
    the drawing does not change as time passes: the window shown (``left`` to ``left + width``) is
    text put in the ``viewBox`` as it is (a number, or a mark the page fills in). The limit line runs
    from 0 to ``reach``."""

    step: float
    origin: int
    reach: int
    left: str
    width: str


class _Drawn(NamedTuple):
    step: float
    at: list[float]
    values: list[float]
    moves: list[str]  # moves[i]: from row i-1 to row i; moves[0] is ""
    body: str  # the moves joined, level runs merged


_LEVEL_RUN: Final = re.compile(r"h\d+(?:h\d+)+")


def _merge_levels(match: re.Match[str]) -> str:
    return f"h{sum(map(int, match[0][1:].split('h')))}"


@functools.lru_cache(maxsize=4096)
def _move(dx: int, dy: float) -> str:
    """One relative move (screen y grows downwards: ``dy`` is the fall of the value)."""
    if dy == 0:
        return f"h{dx}"
    return f"l{dx} {dy:g}" if dy > 0 else f"l{dx}{dy:g}"


class Lines:
    """The moves of every slot's line, updated from the sample lists of each new document."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._drawn: dict[object, _Drawn] = {}
        self._lock = threading.Lock()

    def body(self, slot: object, at: list[float], values: list[float], step: float) -> str:
        """The relative moves through every sample after the first (rows in ascending ``at``)."""
        old = self._drawn.get(slot)
        if old is not None and old.at is at and old.values is values:
            return old.body
        moves = _moves(old, at, values, step)
        body = _LEVEL_RUN.sub(_merge_levels, "".join(moves))
        # Entries are replaced whole (never changed): a reader on another thread sees one or the other.
        with self._lock:
            if len(self._drawn) >= self._size:
                self._drawn.clear()
            self._drawn[slot] = _Drawn(step, at, values, moves, body)
        return body

    def clear(self) -> None:
        with self._lock:
            self._drawn.clear()


def _moves(old: _Drawn | None, at: list[float], values: list[float], step: float) -> list[str]:
    redo = 1  # the first row whose move is formatted here
    moves = [""]
    if old is not None and old.step == step and at and old.at:
        dropped = bisect.bisect_left(old.at, at[0])
        kept = len(old.at) - dropped
        # The rows both lists hold must be the same rows, but for the last old one: it may have
        # merged a later sample of its step (new time, larger gauges), so its move is made again.
        if (
            1 < kept <= len(at)
            and old.at[dropped:-1] == at[: kept - 1]
            and old.values[dropped:-1] == values[: kept - 1]
        ):
            moves = old.moves[dropped : dropped + kept - 1]
            moves[0] = ""
            redo = kept - 1
    x = [int(t // step) for t in at[redo - 1 :]]
    moves.extend(
        _move(x[i + 1] - x[i], values[redo - 1 + i] - values[redo + i]) for i in range(len(at) - redo)
    )
    return moves


def figure(
    lines: Lines,
    slot: object,
    label: str,
    samples: tuple[list[float], list[float]],
    frame: Frame,
    limit: int | None,
) -> str:
    """One captioned sparkline of ``samples`` (times, values; not empty) in ``frame``, with the dashed
    ``limit`` line when the values stay under it."""
    at, values = samples
    step, origin = frame.step, frame.origin
    peak = max(values)
    top = max(peak, float(limit or 0), 1.0)
    pad = top * MARGIN
    caption = f"{label} {values[-1]:g}, peak {peak:g}" + (f" of {limit}" if limit else "")
    limit_line = f'<path class="limit" d="M0 {-limit}H{frame.reach}"/>' if limit and limit >= peak else ""
    first, last = int(at[0] // step) - origin, int(at[-1] // step) - origin
    # 0.0 - v: never the "-0" that -v gives for 0.0.
    line = f"M{first} {0.0 - values[0]:g}{lines.body(slot, at, values, step)}"
    return (
        # The caption says in words what the line shows: the drawing is hidden from screen readers.
        f'<figure><figcaption>{caption}</figcaption><svg viewBox="{frame.left} {-round(top + pad, 2):g} '
        f'{frame.width} {round(top + 2 * pad, 2):g}" preserveAspectRatio="none" aria-hidden="true">'
        f'{limit_line}<path d="{line}"/><path class="dot" d="M{last} {0.0 - values[-1]:g}h0"/></svg>'
        "</figure>"
    )
