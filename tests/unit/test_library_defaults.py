"""The library's module-level helpers with and without configuration: no DATABASE_URL is an error
naming the variables looked for, never a local SQLite file; SQLite is used when asked for. No
servers."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

import poolwatch
from poolwatch.config import Environment
from poolwatch.database import default_target
from poolwatch.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

VARIABLES = [f.metadata["variable"] for f in fields(Environment)]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty environment (for poolwatch's variables) and an empty home directory."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    poolwatch.dispose_defaults()
    yield tmp_path
    poolwatch.dispose_defaults()


def test_without_a_database_url_the_helpers_raise_naming_the_variables(home: Path) -> None:
    with pytest.raises(ConfigError) as caught, poolwatch.session_scope():
        pass
    message = str(caught.value)
    assert message.startswith("no database configured: set DATABASE_URL")
    assert "POSTGRES_HOST" in message
    assert "POOLWATCH_CONFIG" in message
    with pytest.raises(ConfigError, match="no database configured"):
        next(poolwatch.get_session())
    with pytest.raises(ConfigError, match=r"^no Redis configured: set REDIS_URL"):
        next(poolwatch.get_redis())
    assert list(home.rglob("*")) == [], "nothing was written on the way"


def test_the_seed_variables_are_named_as_not_read(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db")
    monkeypatch.setenv("DB_NAME", "orders")
    with pytest.raises(ConfigError, match=r"^DB_HOST, DB_NAME: not read by poolwatch; set DATABASE_URL"):
        poolwatch.get_database()
    assert list(home.rglob("*")) == []


def test_sqlite_is_used_when_asked_for(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{home}/app.db")
    with poolwatch.session_scope() as session:
        assert session.execute(text("SELECT 1")).scalar_one() == 1
    assert (home / "app.db").exists()
    explicit = poolwatch.Database.from_url(f"sqlite:///{home}/other.db")
    with explicit.session_scope() as session:
        assert session.execute(text("SELECT 2")).scalar_one() == 2
    explicit.dispose()


def test_the_library_never_falls_back_to_the_embedded_database(tmp_path: Path) -> None:
    env = {"POOLWATCH_STATE_DIR": str(tmp_path)}
    with pytest.raises(ConfigError) as caught:
        default_target(("postgres", "sqlite"), environ=env)
    assert str(caught.value).startswith("no database configured: set DATABASE_URL")
    assert "POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB" in str(caught.value)
    with pytest.raises(ConfigError, match=r"^no Redis configured: set REDIS_URL"):
        default_target(("redis",), environ=env)
    explicit = default_target(
        ("postgres", "sqlite"), environ={"DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}
    )
    assert explicit.kind == "sqlite"
