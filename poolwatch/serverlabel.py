"""The ``server`` label: which database server a pool or a census talks to, without credentials.

``host:port/database`` as OpenTelemetry names a connection pool (``db.client.connection.pool.name``):
the host lower-cased, the port written out (the scheme's default when the URL has none, so an
application's ``postgresql://app@db/orders`` and the daemon's ``postgresql://poolwatch@db:5432/orders``
meet), no user, password or query. Redis: ``host:port/db``; a Unix socket: the socket's file name;
SQLite: the database file's name. A server's connection limit is per ``host:port``; the shipped
recording rules sum ceilings over every database of one ``host:port``.
"""

from __future__ import annotations

import ntpath
import posixpath
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_PORTS: Final = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306, "redis": 6379}
# Longest label kept (a long socket path or database name is cut).
MAX_LABEL: Final = 200


def sql_server(url: Any) -> str:
    """The label of a SQLAlchemy ``URL`` (``engine.url``): ``host:port/database``."""
    backend = str(url.get_backend_name())
    database = url.database or ""
    if backend == "sqlite":
        return _cut(_file_name(database) if database and database != ":memory:" else "memory")
    host = url.host or _query_host(url.query) or "localhost"
    port = url.port or DEFAULT_PORTS.get(backend)
    return _cut(f"{_host_port(host, port)}/{database}")


def redis_server(connection_kwargs: Mapping[str, Any]) -> str:
    """The label of a redis-py pool (``pool.connection_kwargs``): ``host:port/db``."""
    database = connection_kwargs.get("db", 0)
    path = connection_kwargs.get("path")
    if path:
        return _cut(f"{_file_name(str(path))}/{database}")
    host = str(connection_kwargs.get("host") or "localhost")
    port = connection_kwargs.get("port") or DEFAULT_PORTS["redis"]
    return _cut(f"{_host_port(host, port)}/{database}")


def pg_server(params: Mapping[str, Any]) -> str:
    """The label of libpq-style connection parameters (``host``, ``port``, ``dbname`` or
    ``database``: psycopg2's ``parse_dsn()``, psycopg's ``conninfo_to_dict()``, asyncpg's
    arguments): ``host:port/database``, as ``sql_server`` labels the same server's URL."""
    host = _first(params.get("host")) or _first(params.get("hostaddr"))
    if not host or host.startswith("/"):  # none, or a socket directory: this machine
        host = "localhost"
    port = _first(params.get("port")) or DEFAULT_PORTS["postgresql"]
    database = params.get("dbname") or params.get("database") or ""
    return _cut(f"{_host_port(host, port)}/{database}")


def pg_url_params(url: str) -> dict[str, Any]:
    """``host``, ``port`` and ``dbname`` of a ``postgresql://`` URL (nothing else: never a
    credential), the URL's ``?host=`` / ``?port=`` / ``?dbname=`` taking precedence as in libpq."""
    parts = urlsplit(url)
    params: dict[str, Any] = {
        "host": parts.hostname or "",
        "port": parts.port or "",
        "dbname": unquote(parts.path.lstrip("/")),
    }
    for key, values in parse_qs(parts.query).items():
        if key in params and values:
            params[key] = values[0]
    return params


def _first(value: Any) -> str:
    """The first of a libpq list (``"h1,h2"``, or asyncpg's list of hosts or ports)."""
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    return "" if value is None else str(value).split(",")[0].strip()


def _query_host(query: Mapping[str, Any]) -> str:
    """libpq's ``?host=`` (a socket directory or a host list); a directory means this machine."""
    value = query.get("host")
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    if not value:
        return ""
    text = str(value).split(",")[0]
    return "localhost" if text.startswith("/") else text


def _host_port(host: str, port: object) -> str:
    host = host.lower()
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _file_name(path: str) -> str:
    return ntpath.basename(posixpath.basename(path)) or path


def _cut(label: str) -> str:
    return label[:MAX_LABEL]
