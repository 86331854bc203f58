"""The acquire/release cycle of each pool kind besides SQLAlchemy's QueuePool, for benchmarks/checkout.py.

``checkout.py --kind KIND`` runs its variants (bare, poolwatch with leak detection, poolwatch
without) on one of these cycles, each the library's own acquire and release with nothing between:

- ``psycopg_pool``: ``pool.putconn(pool.getconn())`` on a ``psycopg_pool.ConnectionPool``;
- ``psycopg_pool_async``: the same, awaited, on an ``AsyncConnectionPool``;
- ``asyncpg``: ``await pool.release(await pool.acquire())`` (asyncpg resets a connection on release:
  one round trip, part of the library's cycle);
- ``psycopg2_pool``: ``pool.putconn(pool.getconn())`` on a ``ThreadedConnectionPool``;
- ``redis_async``: ``await pool.release(await pool.get_connection())`` on a ``redis.asyncio``
  ``ConnectionPool`` (redis-py checks the connection's socket on each checkout).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

KINDS = ("psycopg_pool", "psycopg_pool_async", "asyncpg", "psycopg2_pool", "redis_async")
NEEDS_REDIS = ("redis_async",)


def _sync_cycle(kind: str, url: str) -> tuple[Any, Any, Any]:
    """(pool, one cycle, close) for a synchronous kind."""
    if kind == "psycopg_pool":
        import psycopg_pool

        pool = psycopg_pool.ConnectionPool(_dsn(url), min_size=2, max_size=4, open=True)
        pool.wait()

        def cycle() -> None:
            pool.putconn(pool.getconn())

        return pool, cycle, pool.close
    import psycopg2.pool

    p2 = psycopg2.pool.ThreadedConnectionPool(2, 4, _dsn(url))

    def cycle2() -> None:
        p2.putconn(p2.getconn())

    return p2, cycle2, p2.closeall


async def _async_pool(kind: str, url: str) -> tuple[Any, Any, Any]:
    """(pool, one cycle coroutine function, close coroutine function) for an asyncio kind."""
    if kind == "psycopg_pool_async":
        import psycopg_pool

        pool = psycopg_pool.AsyncConnectionPool(_dsn(url), min_size=2, max_size=4, open=False)
        await pool.open(wait=True)

        async def cycle() -> None:
            await pool.putconn(await pool.getconn())

        return pool, cycle, pool.close
    if kind == "asyncpg":
        import asyncpg

        apg = await asyncpg.create_pool(_dsn(url), min_size=2, max_size=4)

        async def cycle2() -> None:
            await apg.release(await apg.acquire())

        return apg, cycle2, apg.close
    import redis.asyncio

    rpool = redis.asyncio.ConnectionPool.from_url(url, max_connections=4)

    async def cycle3() -> None:
        await rpool.release(await rpool.get_connection())

    return rpool, cycle3, rpool.disconnect


def _dsn(url: str) -> str:
    # SQLAlchemy URLs name the driver; the libraries take plain postgresql:// URLs.
    return "postgresql://" + url.split("://", 1)[1] if url.startswith("postgresql") else url


def _instrument(variant: str, pool: Any, registry: Any) -> None:
    import poolwatch

    if variant == "poolwatch":
        poolwatch.instrument(pool, name="bench", registry=registry, leak_threshold=60.0)
    elif variant == "poolwatch-noleak":
        poolwatch.instrument(pool, name="bench", registry=registry)


def _answer(registry: Any, mode: str, wall: float, cpu: float) -> None:
    from prometheus_client import generate_latest

    if mode == "loop":
        print(wall, cpu, 0.0, flush=True)
        return
    scrape_started = time.thread_time()
    generate_latest(registry)
    print(wall, cpu, time.thread_time() - scrape_started, flush=True)


def _check(variant: str, registry: Any, checked: int, mode: str) -> None:
    if variant.startswith("poolwatch") and mode != "loop":
        value = sum(  # whatever the pool's other labels (its server)
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "poolwatch_pool_checkouts_total" and sample.labels.get("pool") == "bench"
        )
        assert value == checked, (value, checked)


def worker(kind: str, variant: str, url: str) -> None:
    """Serve ``run N`` / ``loop N`` requests on stdin like checkout.py's SQLAlchemy worker."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    clock, cpu = time.perf_counter, time.thread_time
    if kind not in ("psycopg_pool", "psycopg2_pool"):
        asyncio.run(_async_worker(kind, variant, url, registry))
        return
    pool, cycle, close = _sync_cycle(kind, url)
    _instrument(variant, pool, registry)
    cycle()  # the first cycle outside the timing
    checked, mode = 1, ""
    for line in sys.stdin:
        mode, count = line.split()
        started, cpu_started = clock(), cpu()
        for _ in range(int(count)):
            cycle()
        wall, used = clock() - started, cpu() - cpu_started
        checked += int(count)
        _answer(registry, mode, wall, used)
    _check(variant, registry, checked, mode)
    close()


async def _async_worker(kind: str, variant: str, url: str, registry: Any) -> None:
    clock, cpu = time.perf_counter, time.thread_time
    pool, cycle, close = await _async_pool(kind, url)
    _instrument(variant, pool, registry)
    await cycle()
    checked, mode = 1, ""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        mode, count = line.split()
        started, cpu_started = clock(), cpu()
        for _ in range(int(count)):
            await cycle()
        wall, used = clock() - started, cpu() - cpu_started
        checked += int(count)
        _answer(registry, mode, wall, used)
    _check(variant, registry, checked, mode)
    await close()
