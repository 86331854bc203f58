"""URLs of targets and the listen address: checks per kind, the password split out, the SQLAlchemy URL.

A SQL URL is checked with ``parse_sql_url``, SQLAlchemy's ``make_url`` rules without SQLAlchemy
(importing any part of it loads the whole package, half a second): ``poolwatch config`` and
``--version`` never load it. ``sqlalchemy_url`` builds the real URL object when an engine is made.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from poolwatch.config_file import read_password_file
from poolwatch.masking import printable, split_password
from poolwatch.schema import SecretStr

if TYPE_CHECKING:
    from collections.abc import Mapping

_MAX_PORT = 65535


_SCHEMES: dict[str, tuple[str, ...]] = {
    "postgres": ("postgresql", "postgresql+psycopg2", "postgresql+psycopg", "postgres"),
    "mysql": ("mysql+pymysql", "mysql+mysqldb", "mysql"),
    # The admin console speaks the PostgreSQL protocol; psycopg2 talks to it directly.
    "pgbouncer": ("postgresql", "postgresql+psycopg2", "postgres"),
    "sqlite": ("sqlite", "sqlite+pysqlite"),
    "redis": ("redis", "rediss", "unix"),
}


_EXAMPLES: dict[str, str] = {
    "postgres": "postgresql+psycopg2://user@host:5432/db",
    "mysql": "mysql+pymysql://user@host:3306/db",
    "pgbouncer": "postgresql://user@host:6432/pgbouncer",
}


# SQLAlchemy's make_url() pattern (sqlalchemy/engine/url.py, 2.0 and 2.1), as it is.
_SQL_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.VERBOSE,
)


class SqlUrl(NamedTuple):
    """The parts of a SQL URL the checks read, as ``sqlalchemy.engine.make_url`` gives them."""

    host: str | None
    port: int | None
    database: str | None
    query: dict[str, str | tuple[str, ...]]


def parse_sql_url(url: str) -> SqlUrl:
    """``make_url(url)``'s host, port, database and query, or ``ValueError`` where ``make_url``
    raises (``tests/unit/test_sql_url.py`` compares the two on many URLs)."""
    match = _SQL_URL.match(url)
    if match is None:
        raise ValueError("not a SQL URL")
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parse_qsl(match["query"] or ""):
        held = query.get(key)
        query[key] = value if held is None else (*((held,) if isinstance(held, str) else held), value)
    database = match["database"]
    port = match["port"]
    return SqlUrl(
        host=match["ipv4host"] or match["ipv6host"],
        port=None if port is None else int(port),  # int("") and int("x") raise, as in make_url
        database=None if database is None else unquote(database),
        query=query,
    )


def check_url(kind: str, url: str) -> None:
    """Reject a URL that cannot work for ``kind``, naming what is expected."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"url must look like {_SCHEMES[kind][0]}://..., got {printable(url)}")
    if scheme not in _SCHEMES[kind]:
        allowed = ", ".join(f"{s}://" for s in _SCHEMES[kind])
        raise ValueError(f"url scheme {scheme}:// does not fit kind {kind} (expected {allowed})")
    if kind == "redis":
        _check_redis_url(scheme, url)
    else:
        _check_sql_url(kind, url, rest)


def _check_sql_url(kind: str, url: str, rest: str) -> None:
    try:
        parsed = parse_sql_url(url.replace("postgres://", "postgresql://", 1))
    except ValueError:
        raise ValueError(f"url is not a valid {kind} URL: {printable(url)}") from None
    if kind == "sqlite" and in_memory(parsed.database, parsed.query):
        # SQLAlchemy gives such an engine a SingletonThreadPool (one database per thread) or a
        # StaticPool (one connection for everyone): nothing a daemon's pool could share or watch.
        raise ValueError(
            "url names an in-memory SQLite database, which exists inside one connection and cannot "
            "be shared by the daemon's pool: give a file, as in sqlite:////var/lib/app/app.db"
        )
    if kind in _EXAMPLES:
        _check_server_url(kind, parsed, rest)


def _check_server_url(kind: str, parsed: SqlUrl, rest: str) -> None:
    example = _EXAMPLES[kind]
    if (not parsed.host and "host" not in parsed.query) or rest.startswith("/") or not rest:
        raise ValueError(f"url needs a host, as in {example}")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError("url has an invalid port") from None
    if port is not None and not 1 <= port <= _MAX_PORT:
        raise ValueError(f"url has an invalid port {port} (expected 1-{_MAX_PORT})")
    if kind == "pgbouncer" and parsed.database != "pgbouncer":
        raise ValueError(f"a pgbouncer url names the admin console's database, as in {example}")


def in_memory(database: str | None, query: Mapping[str, Any]) -> bool:
    """Whether a SQLite URL's database and query name an in-memory database: SQLAlchemy's rule
    (no name, ``:memory:``, ``mode=memory``), and SQLite's ``file::memory:``."""
    return (
        not database
        or database == ":memory:"
        or database.startswith("file::memory:")
        or (query.get("mode") == "memory")
    )


def _check_redis_url(scheme: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"url has an invalid port: {printable(url)}") from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL needs a socket path")
        return
    if not parts.hostname:
        raise ValueError("url needs a host, as in redis://host:6379/0")
    if port == 0:
        raise ValueError("url has an invalid port 0")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError(f"url database must be a number, as in redis://host:6379/0 (got {database!r})")


def sqlalchemy_url(url: str, password: SecretStr | None) -> Any:
    """The ``sqlalchemy.engine.URL`` of a SQL target or the audit database, with its password (never
    printed: the URL object masks it in ``str()`` and ``repr()``)."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    elif parsed.drivername == "mysql":
        parsed = parsed.set(drivername="mysql+pymysql")  # SQLAlchemy's default would be mysqlclient
    if password is not None:
        parsed = parsed.set(password=password.get_secret_value())
    return parsed


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` -> (host, port). Port 0 asks for a free port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > _MAX_PORT:
        raise ValueError(f"expected host:port with a port 0-65535, got {printable(value)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{printable(host)} is not an IPv6 address") from None
    elif host == "":
        host = "0.0.0.0"  # noqa: S104 - an explicit ":port" asks for every interface
    elif not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
        raise ValueError(f"expected host:port, got {printable(value)}")
    return host, int(port_text)


def split_url_password(data: Any) -> Any:
    """A target's or the audit database's raw settings with the password moved out of ``url`` (or
    read from ``password_file``) into a ``SecretStr``, before anything can print it."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if isinstance(data.get("url"), str):
        data["url"], password = split_password(data["url"])
        if password is not None:
            if data.get("password_file") is not None:
                raise ValueError("give the password in url or in password_file, not both")
            data["password"] = SecretStr(password)
    if isinstance(data.get("password_file"), str):
        data["password"] = SecretStr(read_password_file(data["password_file"]))
    elif isinstance(data.get("password"), str):
        data["password"] = SecretStr(data["password"])
    return data


def check_sqlite_directory(url: str, state_dir: str | None) -> None:
    """A SQLite file's directory must exist: poolwatch creates its own state directory only (a typo
    in a path must not become a directory tree, made by whoever runs poolwatch, root included)."""
    database = parse_sql_url(url.replace("postgres://", "postgresql://", 1)).database
    if not database or database.startswith("file:"):
        return
    directory = Path(database).parent
    if directory.is_dir():
        return
    if state_dir is not None and os.path.abspath(directory) == os.path.abspath(state_dir):  # noqa: PTH100
        return
    raise ValueError(
        f"url points into the directory {str(directory)!r}, which does not exist (create it first)"
    )
