"""The async counterparts of ``Database`` and ``RedisDatabase`` (extra: ``poolwatch[async]``).

``AsyncDatabase.session_scope()`` is an ``async with`` scope over an ``AsyncSession`` (commit on
success, roll back on any error, always close); ``get_session()`` is an async generator for FastAPI.
SQLAlchemy's asyncio layer needs greenlet, and PostgreSQL needs an async driver (asyncpg).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from poolwatch.errors import translating

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

log = logging.getLogger(__name__)


class AsyncDatabase:
    """One shared ``AsyncEngine`` and the async session lifecycle around it."""

    def __init__(self, engine: AsyncEngine, *, name: str = "default") -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker  # noqa: PLC0415 - optional extra

        self.name = name
        self.engine = engine
        self._sessions = async_sessionmaker(bind=engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, *, name: str = "default", **engine_kwargs: Any) -> AsyncDatabase:
        from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415

        return cls(create_async_engine(url, **engine_kwargs), name=name)

    @contextlib.asynccontextmanager
    async def session_scope(self) -> AsyncIterator[AsyncSession]:
        """Commit on success, roll back on any error, always close."""
        session = self._sessions()
        try:
            with translating(self.name):
                yield session
                await session.commit()
        except BaseException:
            try:
                await session.rollback()
            except Exception as exc:
                log.debug("rollback after error failed: %s", type(exc).__name__)
            raise
        finally:
            await session.close()

    async def get_session(self) -> AsyncIterator[AsyncSession]:
        """``session_scope()`` as an async generator, for ``Depends(db.get_session)``."""
        async with self.session_scope() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


class AsyncRedisDatabase:
    """One shared ``redis.asyncio`` client with translated errors."""

    def __init__(self, client: aioredis.Redis, *, name: str = "redis") -> None:
        self.name = name
        self.client = client

    @contextlib.asynccontextmanager
    async def client_scope(self) -> AsyncIterator[aioredis.Redis]:
        with translating(self.name):
            yield self.client

    async def get_client(self) -> AsyncIterator[aioredis.Redis]:
        async with self.client_scope() as client:
            yield client

    async def close(self) -> None:
        await self.client.aclose()
