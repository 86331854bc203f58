"""Instrumented pools through server outages while eight threads (or asyncio tasks) use them: stopped,
killed with -9, backends terminated, Redis SHUTDOWN. The application sees the outages; poolwatch's
hooks never fail (``poolwatch_instrumentation_errors_total`` stays 0) and the counts still add up."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

import poolwatch
from poolwatch.exposition import Renderer
from tests.poolmetrics import sample

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.servers import PostgresServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.destructive]

THREADS = 8


class Workload:
    """``THREADS`` threads running ``work`` in a loop (its errors counted, never raised) and a thread
    scraping the registry both ways, until stopped."""

    def __init__(self, registry: CollectorRegistry, work: Callable[[], None]) -> None:
        self.registry = registry
        self.work = work
        self.done = 0
        self.failed = 0
        self.unexpected: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(THREADS)]
        self._threads.append(threading.Thread(target=self._scrape))

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._once():
                time.sleep(0.01)  # an application would back off too; keeps a dead server's loop cheap

    def _once(self) -> bool:
        try:
            self.work()
        except Exception:  # the outage, as the application sees it
            with self._lock:
                self.failed += 1
            return False
        with self._lock:
            self.done += 1
        return True

    def _scrape(self) -> None:
        renderer = Renderer(self.registry)
        try:
            while not self._stop.is_set():
                generate_latest(self.registry)
                renderer.render()
        except BaseException as exc:
            self.unexpected.append(exc)

    def progress(self, more: int = 50, timeout: float = 60) -> None:
        """Wait until ``more`` further units of work succeeded."""
        target = self.done + more
        _wait(lambda: self.done >= target, timeout, f"{more} successful calls")

    def failures(self, more: int = 1, timeout: float = 60) -> None:
        target = self.failed + more
        _wait(lambda: self.failed >= target, timeout, f"{more} failed calls")

    @contextmanager
    def running(self) -> Iterator[Workload]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(60)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.02)


@pytest.mark.parametrize("pre_ping", [False, True])
def test_postgres_outages_cause_no_internal_error(pg_factory, pre_ping) -> None:
    server = pg_factory()
    app = f"pw-faults-{uuid.uuid4().hex[:8]}"
    engine = create_engine(
        server.url(),
        pool_size=4,
        max_overflow=2,
        pool_timeout=2,
        pool_pre_ping=pre_ping,
        connect_args={"application_name": app, "connect_timeout": 2},
    )
    registry = CollectorRegistry()
    poolwatch.instrument(engine, name="pg", registry=registry, leak_threshold=0.5)

    def work() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    with Workload(registry, work).running() as load:
        postgres_outages(server, load, app)
    engine.dispose()
    settled(registry, "pg", load)
    assert sample(registry, "pool_connections", "pg", state="used") == 0


def test_postgres_outages_on_an_async_engine_cause_no_internal_error(pg_factory) -> None:
    """AsyncAdaptedQueuePool (asyncpg): the eight threads' calls run as tasks on one event loop."""
    server = pg_factory()
    app = f"pw-faults-{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()
    with event_loop_thread() as run:

        async def build() -> AsyncEngine:
            return create_async_engine(
                server.url(driver="postgresql+asyncpg"),
                pool_size=4,
                max_overflow=2,
                pool_timeout=2,
                connect_args={"server_settings": {"application_name": app}, "timeout": 2},
            )

        engine = run(build())
        assert isinstance(engine.pool, AsyncAdaptedQueuePool)
        poolwatch.instrument(engine, name="pg", registry=registry, leak_threshold=0.5)

        async def query() -> None:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        with Workload(registry, lambda: run(query())).running() as load:
            postgres_outages(server, load, app)
        run(engine.dispose())
    settled(registry, "pg", load)
    assert sample(registry, "pool_connections", "pg", state="used") == 0


def settled(registry: CollectorRegistry, name: str, load: Workload) -> None:
    """After the outages: nothing unexpected, no internal error, nothing pending, every checkout
    counted (at least the calls that succeeded) with its use time."""
    assert load.unexpected == []
    assert sample(registry, "instrumentation_errors_total", name) == 0
    assert sample(registry, "pool_pending_requests", name) == 0
    checkouts = sample(registry, "pool_checkouts_total", name)
    assert checkouts >= load.done
    assert sample(registry, "pool_use_seconds_count", name) == checkouts


@contextmanager
def event_loop_thread() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """An event loop on a thread of its own; yields a function running a coroutine on it."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="event-loop")
    runner.start()

    def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(30)

    try:
        yield run
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(30)
        loop.close()


def postgres_outages(server: PostgresServer, load: Workload, app: str) -> None:
    """Stop, kill -9, then terminate the backends of ``app`` three times, each after progress."""
    load.progress()
    server.stop()
    load.failures(20)
    server.start()
    load.progress()
    server.kill()
    load.failures(20)
    server.start()
    load.progress()
    for _ in range(3):
        server.terminate(app)
        load.progress()


def redis_outages(server: RedisServer, load: Workload, name: str) -> None:
    """SHUTDOWN, kill -9, then CLIENT KILL the connections named ``name`` three times, each after
    progress."""
    load.progress()
    _shutdown(server)
    load.failures(20)
    server.start()
    load.progress()
    server.kill()
    load.failures(20)
    server.start()
    load.progress()
    admin = server.client()
    for _ in range(3):
        for entry in admin.client_list():
            if entry.get("name") == name:
                with suppress(redis.ResponseError):
                    admin.client_kill_filter(_id=entry["id"])
        load.progress()
    admin.close()


def _shutdown(server: Any) -> None:
    """SHUTDOWN NOSAVE from a client, then forget the exited process."""
    with suppress(redis.ConnectionError):
        server.client().shutdown(nosave=True)
    executor = server._executor
    _wait(lambda: executor.process is None or executor.process.poll() is not None, 30, "redis exit")
    with suppress(Exception):
        executor.stop()
    server._executor = None


@pytest.mark.parametrize("pool_class", [redis.ConnectionPool, redis.BlockingConnectionPool])
def test_redis_outages_cause_no_internal_error(redis_factory, pool_class) -> None:
    server = redis_factory()
    name = f"pw-faults-{uuid.uuid4().hex[:8]}"
    pool = pool_class(
        host=server.host, port=server.port, client_name=name, max_connections=6, socket_connect_timeout=2
    )
    registry = CollectorRegistry()
    poolwatch.instrument_redis(pool, name="cache", registry=registry, leak_threshold=0.5)
    client = redis.Redis(connection_pool=pool)

    def work() -> None:
        client.ping()

    with Workload(registry, work).running() as load:
        redis_outages(server, load, name)
    pool.disconnect()
    settled(registry, "cache", load)
