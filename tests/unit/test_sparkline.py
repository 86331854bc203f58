"""Sparklines: the drawn geometry, and a line kept from page to page equal to one drawn afresh."""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

from poolwatch import sparkline
from poolwatch.history import History
from poolwatch.sparkline import Frame, Lines, figure

if TYPE_CHECKING:
    import pytest


def _path(page: str) -> str:
    found = re.search(r'<path d="([^"]*)"/>', page)
    assert found is not None, page
    return found[1]


def test_a_line_is_drawn_in_the_series_units_from_its_origin_in_the_frame_given() -> None:
    at = [1000.0, 1010.0, 1020.0, 1030.0, 1040.0, 1060.0]
    values = [2.0, 5.0, 5.0, 5.0, 1.0, 0.0]
    frame = Frame(step=10.0, origin=99, reach=20, left="3", width="10")
    page = figure(Lines(), "slot", "in use", (at, values), frame, 8)
    # From step 100 (x 1): up 3, level for 2 steps (one "h"), down 4, then a 2-step gap down 1; y is
    # minus the value.
    assert _path(page) == "M1 -2l1-3h2l1 4l2 1"
    assert '<path class="dot" d="M7 0h0"/>' in page
    assert '<path class="limit" d="M0 -8H20"/>' in page
    # The box: the frame's window across; from 0 to the pool's limit (8) up, with the same margin
    # above and below as 1.5 of 25 pixels.
    assert 'viewBox="3 -8.48 10 8.96"' in page
    assert "<figcaption>in use 0, peak 5 of 8</figcaption>" in page


def test_the_limit_line_is_left_out_when_values_went_past_it() -> None:
    frame = Frame(step=10.0, origin=0, reach=5, left="0", width="3")
    page = figure(Lines(), "slot", "in use", ([1.0, 11.0], [3.0, 9.0]), frame, 8)
    assert 'class="limit"' not in page
    assert 'viewBox="0 -9.54 3 10.08"' in page


def test_a_line_kept_from_page_to_page_is_the_line_drawn_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real history fed irregular samples (merged within a step, gaps, a full ring wrapping): after
    every sample the kept line and a line drawn with an empty cache are the same, and the kept one
    formatted only a move or two."""
    made = {"kept": 0, "fresh": 0}
    counting = ["kept"]

    real = sparkline._move

    def move(dx: int, dy: float) -> str:
        made[counting[0]] += 1
        return real(dx, dy)

    monkeypatch.setattr(sparkline, "_move", move)
    rng = random.Random(7)
    history = History(window=100, step=10)
    kept = Lines()
    at = 1_000_000.0
    for _ in range(400):
        at += rng.choice((0.5, 3.0, 7.0, 10.0, 10.0, 10.0, 25.0, 60.0))
        history.add_pool(at, used=rng.choice((0, 1, 1, 2, 5)), pending=0, timeouts=0, leaks=0)
        trend = history.trend()
        counting[0] = "kept"
        drawn = kept.body("slot", trend.at, trend.used, 10.0)
        counting[0] = "fresh"
        assert drawn == Lines().body("slot", trend.at, trend.used, 10.0), (trend.at, trend.used)
    assert made["fresh"] > 3_000
    assert made["kept"] < 400 * 3, made
