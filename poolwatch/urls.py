"""URLs of targets and the listen address: passwords split out and masked, checks per target kind."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from poolwatch.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from poolwatch.config import Environment, Kind

MASK = "***"
_MAX_PORT = 65535
_SHOWN_CHARS = 60  # of a rejected value, in an error line


def split_password(url: str) -> tuple[str, str | None]:
    """``scheme://user:pw@host/db`` -> (``scheme://user@host/db``, ``pw``). Percent-escapes kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    if not sep:
        return url, None
    netloc = f"{user}@{hostport}" if user else hostport
    return urlunsplit(parts._replace(netloc=netloc)), unquote(password)


def mask_url(url: str, has_password: bool) -> str:
    """The URL with ``***`` standing for its password (or for any password left in it)."""
    bare, _ = split_password(url)
    if not has_password:
        return bare
    parts = urlsplit(bare)
    user, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{user}:{MASK}@{hostport}" if at else f":{MASK}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


_SCHEMES: dict[str, tuple[str, ...]] = {
    "postgres": ("postgresql", "postgresql+psycopg2", "postgres"),
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


def check_url(kind: Kind, url: str) -> None:
    """Reject a URL that cannot work for ``kind``, naming what is expected."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"url must look like {_SCHEMES[kind][0]}://..., got {printable(url)}")
    if scheme not in _SCHEMES[kind]:
        allowed = ", ".join(f"{s}://" for s in _SCHEMES[kind])
        raise ValueError(f"url scheme {scheme}:// does not fit kind {kind} (expected {allowed})")
    if kind == "redis":
        _check_redis_url(scheme, url)
        return
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except (ArgumentError, ValueError):
        raise ValueError(f"url is not a valid {kind} URL: {printable(url)}") from None
    if kind in _EXAMPLES:
        _check_server_url(kind, parsed, rest)


def _check_server_url(kind: Kind, parsed: Any, rest: str) -> None:
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


def postgres_url(env: Environment) -> str:
    """The URL the ``POSTGRES_*`` variables describe; the database defaults to the user, as in the
    official postgres image."""
    port = env.postgres_port or "5432"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= _MAX_PORT:
        raise ConfigError(f"POSTGRES_PORT: expected a port number 1-65535 (got {printable(port)})")
    user = quote(env.postgres_user or "postgres", safe="")
    password = f":{quote(env.postgres_password, safe='')}" if env.postgres_password else ""
    host = env.postgres_host or "localhost"
    host = f"[{host}]" if ":" in host else host
    database = quote(env.postgres_db or env.postgres_user or "postgres", safe="")
    return f"postgresql+psycopg2://{user}{password}@{host}:{port}/{database}"


def printable(value: Any) -> str:
    """A rejected value as an error line may show it: its repr, a URL masked, at most 60 characters."""
    text = repr(value)
    if "://" in text:  # a URL that failed validation may still carry a password
        text = repr(mask_url(str(value), has_password=True)) if isinstance(value, str) else "<url>"
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
