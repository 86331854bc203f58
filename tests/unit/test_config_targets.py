"""Configuration of mysql and pgbouncer targets: URLs per kind, what applies to each, the environment."""

from __future__ import annotations

from typing import Any

import pytest

from poolwatch.config import load_settings, validate
from poolwatch.database import engine_options
from poolwatch.errors import ConfigError

SECRET = "s3cr3t-Pa55"


def settings_of(**target: Any) -> Any:
    return validate({"targets": [{"name": "t", **target}]}).targets[0]


@pytest.mark.parametrize(
    "url",
    ["mysql+pymysql://app@db:3306/orders", "mysql+mysqldb://app@db/orders", "mysql://app@db:3306/orders"],
)
def test_mysql_urls_are_accepted(url: str) -> None:
    assert settings_of(kind="mysql", url=url).kind == "mysql"


@pytest.mark.parametrize(
    ("kind", "url", "expected"),
    [
        ("mysql", "postgresql://app@db/orders", "url scheme postgresql:// does not fit kind mysql"),
        ("mysql", "mysql+pymysql:///orders", r"url needs a host, as in mysql\+pymysql://"),
        ("mysql", "mysql+pymysql://app@db:99999/orders", "invalid port"),
        ("pgbouncer", "mysql://app@db/pgbouncer", "does not fit kind pgbouncer"),
        ("pgbouncer", "postgresql://admin@db:6432/orders", "names the admin console's database"),
        ("pgbouncer", "postgresql:///pgbouncer", "url needs a host"),
    ],
)
def test_urls_that_cannot_work_for_the_kind_are_one_line(kind: str, url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        settings_of(kind=kind, url=url)
    assert "\n" not in str(caught.value)


def test_a_pgbouncer_target_has_no_reaper() -> None:
    reaper = {"enabled": True, "idle_timeout": 60, "users": ["app"]}
    with pytest.raises(
        ConfigError, match="the reaper works on postgres, mysql and redis targets, not pgbouncer"
    ):
        settings_of(kind="pgbouncer", url="postgresql://admin@db:6432/pgbouncer", reaper=reaper)


def test_kill_procedure_is_for_mysql_and_must_be_a_procedure_name() -> None:
    url = "mysql+pymysql://app@db/orders"
    assert settings_of(
        kind="mysql", url=url, reaper={"kill_procedure": "mysql.rds_kill"}
    ).reaper.kill_procedure
    with pytest.raises(ConfigError, match="a stored procedure name"):
        settings_of(kind="mysql", url=url, reaper={"kill_procedure": "x; DROP TABLE t"})
    with pytest.raises(ConfigError, match="kill_procedure applies to mysql targets only"):
        settings_of(kind="postgres", url="postgresql://a@db/x", reaper={"kill_procedure": "k"})


def test_database_url_with_a_mysql_url_defines_a_mysql_target() -> None:
    (only,) = load_settings(environ={"DATABASE_URL": f"mysql+pymysql://app:{SECRET}@db:3306/orders"}).targets
    assert (only.name, only.kind, only.url) == ("mysql", "mysql", "mysql+pymysql://app@db:3306/orders")
    assert only.password is not None
    assert SECRET not in repr(only)


def test_mysql_pools_carry_the_same_pool_settings_and_their_name_as_program_name() -> None:
    target = settings_of(
        kind="mysql",
        url="mysql://app@db/orders",
        pool={"size": 3, "max_overflow": 2, "timeout": 7, "connect_timeout": 4, "application_name": "web"},
    )
    options = engine_options(target)
    assert (options["pool_size"], options["max_overflow"], options["pool_timeout"]) == (3, 2, 7)
    assert options["pool_pre_ping"] is True
    assert options["connect_args"] == {"connect_timeout": 4, "program_name": "web"}


def test_mysqlclient_urls_get_no_program_name() -> None:
    # mysqlclient has no connection-attribute option: passing one would fail every connect.
    target = settings_of(kind="mysql", url="mysql+mysqldb://app@db/orders")
    assert "program_name" not in engine_options(target)["connect_args"]


def test_a_driver_that_is_not_installed_is_one_line() -> None:
    pytest.importorskip("pymysql")
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mysqlclient is installed here")
    from poolwatch.database import create_target_engine

    with pytest.raises(ConfigError, match=r"targets\.t\.url: driver MySQLdb is not installed") as caught:
        create_target_engine(settings_of(kind="mysql", url="mysql+mysqldb://app@db/orders"))
    assert "\n" not in str(caught.value)
