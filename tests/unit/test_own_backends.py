"""The reaper's record of poolwatch's own engines: each engine tracked once, a dropped engine
forgotten, and every engine a reload builds tracked, even when it reuses a dropped one's id(). No
servers: the engines are never connected."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from sqlalchemy import create_engine

from poolwatch.reaper.own import OwnBackends

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

URL = "postgresql+psycopg2://poolwatch@db.invalid/orders"


def connect_listeners(engine: Engine) -> int:
    return len(engine.pool.dispatch.connect)


def test_an_engine_is_tracked_once() -> None:
    own = OwnBackends()
    engine = create_engine(URL)
    before = connect_listeners(engine)
    own.track(engine)
    own.track(engine)
    assert connect_listeners(engine) == before + 1


def test_a_dropped_engine_is_forgotten() -> None:
    own = OwnBackends()
    engine = create_engine(URL)
    own.track(engine)
    del engine
    gc.collect()
    assert len(own._tracked) == 0


def test_every_engine_of_every_reload_is_tracked() -> None:
    # A reload drops a target's engine and builds another; CPython often gives the new one the
    # dropped one's address, hence its id(). How often depends on what the allocator holds from
    # earlier tests: 50 rounds at least, and on until a few ids were reused (500 at most).
    own = OwnBackends()
    ids: set[int] = set()
    reused = rounds = 0
    while rounds < 50 or (reused < 3 and rounds < 500):
        rounds += 1
        engine = create_engine(URL)
        reused += id(engine) in ids
        ids.add(id(engine))
        before = connect_listeners(engine)
        own.track(engine)
        assert connect_listeners(engine) == before + 1, "this engine's sessions would not be known as ours"
        del engine
        gc.collect()
    assert reused, "no id was reused: the rounds did not exercise what they are for"
