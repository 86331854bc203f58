"""Sessions, clients and error translation against real PostgreSQL and Redis servers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from typing import TYPE_CHECKING

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from poolwatch import (
    AuthenticationFailedError,
    Database,
    DatabaseUnavailableError,
    PoolExhaustedError,
    QueryFailedError,
    RedisDatabase,
    TransactionFailedError,
)
from poolwatch.async_database import AsyncDatabase, AsyncRedisDatabase
from poolwatch.config import validate
from poolwatch.database import create_target_engine, create_target_redis
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def db(pg: PostgresServer) -> Iterator[Database]:
    database = Database.from_url(pg.url(), pool_size=2, max_overflow=0, pool_timeout=1)
    with database.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, v text)")
        connection.exec_driver_sql("TRUNCATE items")
    yield database
    database.dispose()


def count(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM items")).scalar_one())


def test_session_scope_commits_on_success(db: Database) -> None:
    with db.session_scope() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a')"))
    assert count(db) == 1


def test_session_scope_rolls_back_on_any_error_and_reraises_it(db: Database) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.session_scope() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a')"))
        raise Boom
    assert count(db) == 0


def test_session_scope_always_returns_the_connection(db: Database) -> None:
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    for fail in (False, True):
        with pytest.raises(ValueError) if fail else contextlib.nullcontext(), db.session_scope() as session:
            session.execute(text("SELECT 1"))
            assert pool.checkedout() == 1
            if fail:
                raise ValueError
        assert pool.checkedout() == 0


def test_get_session_is_a_dependency_generator_that_commits_and_closes(db: Database) -> None:
    dependency = db.get_session()
    session = next(dependency)
    session.execute(text("INSERT INTO items VALUES (2, 'b')"))
    with pytest.raises(StopIteration):
        next(dependency)  # FastAPI resumes the generator after the response
    assert count(db) == 1
    assert isinstance(db.engine.pool, QueuePool)
    assert db.engine.pool.checkedout() == 0


def test_get_session_rolls_back_when_the_request_fails(db: Database) -> None:
    dependency = db.get_session()
    session = next(dependency)
    session.execute(text("INSERT INTO items VALUES (3, 'c')"))
    with pytest.raises(KeyError):
        dependency.throw(KeyError("handler failed"))  # what FastAPI does on an exception
    assert count(db) == 0


def test_constraint_violation_is_a_query_failure_with_the_driver_error_as_cause(db: Database) -> None:
    with pytest.raises(QueryFailedError) as caught, db.session_scope() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a'), (1, 'b')"))
    assert caught.value.sqlstate == "23505"
    assert caught.value.__cause__ is not None
    assert "INSERT" not in str(caught.value)  # statement and parameters stay out of the message


def test_pool_exhaustion_is_pool_exhausted(db: Database) -> None:
    with db.engine.connect(), db.engine.connect():
        with pytest.raises(PoolExhaustedError) as caught, db.session_scope() as session:
            session.execute(text("SELECT 1"))
    assert caught.value.retryable
    assert caught.value.reason == "pool_timeout"


def test_a_real_deadlock_is_a_retryable_transaction_failure(db: Database) -> None:
    with db.session_scope() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a'), (2, 'b')"))
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def worker(first: int, second: int) -> None:
        try:
            with db.session_scope() as session:
                session.execute(text("UPDATE items SET v = 'x' WHERE id = :id"), {"id": first})
                barrier.wait()
                session.execute(text("UPDATE items SET v = 'y' WHERE id = :id"), {"id": second})
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=args) for args in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 1, errors  # PostgreSQL picks one victim; the other commits
    (error,) = errors
    assert isinstance(error, TransactionFailedError)
    assert error.retryable
    assert error.sqlstate == "40P01"


def test_serialization_failure_is_retryable(db: Database) -> None:
    with db.session_scope() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a')"))
    serializable = Database(db.engine.execution_options(isolation_level="SERIALIZABLE"))
    with pytest.raises(TransactionFailedError) as caught, serializable.session_scope() as first:
        first.execute(text("SELECT v FROM items WHERE id = 1")).all()
        with db.session_scope() as second:
            second.execute(text("UPDATE items SET v = 'changed' WHERE id = 1"))
        first.execute(text("UPDATE items SET v = 'mine' WHERE id = 1"))
    assert caught.value.retryable
    assert caught.value.sqlstate == "40001"


def test_refused_connection_is_database_unavailable() -> None:
    port = free_port()
    database = Database.from_url(f"postgresql+psycopg2://u@127.0.0.1:{port}/x")
    with pytest.raises(DatabaseUnavailableError) as caught, database.session_scope() as session:
        session.execute(text("SELECT 1"))
    assert caught.value.reason == "refused"
    assert caught.value.retryable


def test_wrong_password_is_authentication_failed(pg: PostgresServer) -> None:
    database = Database.from_url(pg.url(password="wrong-password"))
    with pytest.raises(AuthenticationFailedError) as caught, database.session_scope() as session:
        session.execute(text("SELECT 1"))
    assert caught.value.reason == "auth"
    assert not caught.value.retryable
    assert "wrong-password" not in str(caught.value)


def test_target_engine_uses_the_pool_settings_and_application_name(pg: PostgresServer) -> None:
    settings = validate(
        {
            "targets": [
                {
                    "name": "orders",
                    "kind": "postgres",
                    "url": pg.url(),
                    "pool": {"size": 3, "max_overflow": 1, "application_name": "orders-api"},
                }
            ]
        }
    )
    engine = create_target_engine(settings.targets[0])
    try:
        with engine.connect() as connection:
            name = connection.exec_driver_sql("SHOW application_name").scalar()
        assert name == "orders-api"
        assert isinstance(engine.pool, QueuePool)
        assert engine.pool.size() == 3
        assert "***" in repr(engine.url)
    finally:
        engine.dispose()


def test_shared_engine_serves_many_threads(db: Database) -> None:
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                with db.session_scope() as session:
                    session.execute(text("SELECT 1"))
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert isinstance(db.engine.pool, QueuePool)
    assert db.engine.pool.checkedout() == 0


# --- Redis ---------------------------------------------------------------------------------------


def test_redis_client_scope_and_dependency(redis_server: RedisServer) -> None:
    settings = validate({"targets": [{"name": "cache", "kind": "redis", "url": redis_server.url()}]})
    cache = RedisDatabase.from_target(settings.targets[0])
    key = f"k-{uuid.uuid4()}"
    try:
        with cache.client_scope() as client:
            client.set(key, "v", ex=60)
        dependency = cache.get_client()
        assert next(dependency).get(key) == b"v"
        names = [c["name"] for c in redis_server.client().client_list()]
        assert "poolwatch-cache" in names  # CLIENT SETNAME, for the census
    finally:
        cache.close()


def test_redis_transaction_scope_discards_on_error(redis_server: RedisServer) -> None:
    cache = RedisDatabase(redis.Redis(host=redis_server.host, port=redis_server.port))
    key = f"k-{uuid.uuid4()}"
    with pytest.raises(RuntimeError), cache.transaction_scope() as pipe:
        pipe.set(key, "v")
        raise RuntimeError
    assert redis_server.client().get(key) is None
    with cache.transaction_scope() as pipe:
        pipe.set(key, "v", ex=60)
    assert redis_server.client().get(key) == b"v"
    cache.close()


def test_redis_errors_are_translated() -> None:
    refused = RedisDatabase(redis.Redis(port=free_port(), socket_connect_timeout=2))
    with pytest.raises(DatabaseUnavailableError) as caught, refused.client_scope() as client:
        client.ping()
    assert caught.value.reason == "refused"


@pytest.mark.destructive
def test_redis_wrong_password_is_authentication_failed(redis_factory) -> None:
    server = redis_factory(password="right-one")
    settings = validate({"targets": [{"name": "c", "kind": "redis", "url": server.url(password="wrong")}]})
    client = create_target_redis(settings.targets[0])
    with pytest.raises(AuthenticationFailedError), RedisDatabase(client).client_scope() as c:
        c.ping()


# --- async -----------------------------------------------------------------------------------------


def test_async_session_scope_commits_and_rolls_back(pg: PostgresServer, db: Database) -> None:
    async def scenario() -> None:
        adb = AsyncDatabase.from_url(pg.url(driver="postgresql+asyncpg"), pool_size=2)
        try:
            async with adb.session_scope() as session:
                await session.execute(text("INSERT INTO items VALUES (10, 'a')"))
            with pytest.raises(ZeroDivisionError):
                async with adb.session_scope() as session:
                    await session.execute(text("INSERT INTO items VALUES (11, 'b')"))
                    _ = 1 / 0
            dependency = adb.get_session()
            session = await anext(dependency)
            assert (await session.execute(text("SELECT count(*) FROM items"))).scalar_one() == 1
            with pytest.raises(StopAsyncIteration):
                await anext(dependency)
        finally:
            await adb.dispose()

    asyncio.run(scenario())
    assert count(db) == 1


def test_async_errors_are_translated(pg: PostgresServer) -> None:
    async def scenario() -> None:
        adb = AsyncDatabase.from_url(pg.url(password="nope", driver="postgresql+asyncpg"))
        try:
            with pytest.raises(AuthenticationFailedError):
                async with adb.session_scope() as session:
                    await session.execute(text("SELECT 1"))
        finally:
            await adb.dispose()

    asyncio.run(scenario())


def test_async_redis_scope(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    async def scenario() -> None:
        cache = AsyncRedisDatabase(aioredis.Redis(host=redis_server.host, port=redis_server.port))
        try:
            async with cache.client_scope() as client:
                assert await client.ping()
        finally:
            await cache.close()

    asyncio.run(scenario())
