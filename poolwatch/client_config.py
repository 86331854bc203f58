"""Where ``poolwatch status`` finds the daemon of a configuration, and the credentials it asks with.

Only the file's ``http`` section is read (the targets' password files may be unreadable to whoever
asks for the status, and do not matter to it); the environment comes from ``config.Environment``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from poolwatch.config import DEFAULT_LISTEN, Environment, require_mapping
from poolwatch.config_file import read_yaml
from poolwatch.errors import ConfigError
from poolwatch.schema import SecretStr
from poolwatch.urls import parse_listen

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class ClientSettings:
    """How ``poolwatch status`` reaches a running daemon, and how it prints."""

    base_url: str  # scheme://host:port, no credentials
    cert_file: str | None  # the daemon's certificate (trusted as well as the system's CAs)
    user: str | None
    password: SecretStr | None
    color: bool  # False when NO_COLOR is set


def client_settings(
    config_file: str | None = None, *, locate: bool = True, environ: Mapping[str, str] | None = None
) -> ClientSettings:
    """Where the daemon of this configuration listens: ``http.listen`` (or ``POOLWATCH_LISTEN``),
    over HTTPS when ``http.tls`` is set; with ``locate`` False (a URL was given) no file is read.
    Only the ``http`` section is read: the targets' password files may be unreadable to whoever
    asks for the status, and do not matter to it."""
    env = Environment.read(environ)
    path = (config_file or env.config) if locate else None
    http = read_yaml(path).get("http", {}) if path else {}
    require_mapping(http, "http")
    listen = (env.listen if locate else None) or http.get("listen", DEFAULT_LISTEN)
    tls = http.get("tls")
    if tls is not None:
        require_mapping(tls, "http.tls")
    try:
        host, port = parse_listen(listen if isinstance(listen, str) else repr(listen))
    except ValueError as exc:
        raise ConfigError(f"http.listen: {exc}") from None
    # A daemon listening on every interface is asked on the loopback one.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    cert = tls.get("cert_file") if tls else None
    return ClientSettings(
        base_url=f"{'https' if tls else 'http'}://{host}:{port}",
        cert_file=cert if isinstance(cert, str) else None,
        user=env.http_user or None,
        password=SecretStr(env.http_password) if env.http_password else None,
        color=not env.no_color,
    )
