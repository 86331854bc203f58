"""Fetching a running daemon's status document: HTTP or HTTPS, basic auth, a CA, no credential echoed.

Credentials travel only in the ``Authorization`` header of a request to the URL given: no proxy from
the environment is used and redirects are refused (either would hand them to another host), and a
URL's ``user:password@`` part is taken out before the URL appears in any message.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from poolwatch.errors import ConfigError, PoolwatchError

if TYPE_CHECKING:
    from poolwatch.status import StatusDoc

SCHEMA_VERSION: Final = 1  # the schema this client reads (poolwatch.status.SCHEMA_VERSION)
MAX_BYTES: Final = 64 << 20


class UnreachableError(PoolwatchError):
    """The daemon did not answer, refused the credentials, or answered something else."""


@dataclass(frozen=True)
class Remote:
    """A daemon to ask: ``url`` carries no credentials; ``password`` is never printed."""

    url: str
    user: str | None = None
    password: str | None = None
    ca_file: str | None = None
    trusted_cert: str | None = None  # the daemon's own certificate, trusted besides the system CAs
    client_cert: str | None = None
    client_key: str | None = None

    def __repr__(self) -> str:
        return f"Remote(url={self.url!r}, user={self.user!r})"


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``https://u:p@host:1/`` -> (``https://host:1``, ``u``, ``p``); the URL checked, never echoed
    with its credentials."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError("--url: not a valid URL (expected http://host:port)") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError("--url: expected http://host:port or https://host:port")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), user, password


def fetch(remote: Remote, timeout: float) -> StatusDoc:
    """The daemon's /status document; ``UnreachableError`` with a one-line reason otherwise."""
    request = urllib.request.Request(remote.url + "/status", headers={"Accept": "application/json"})  # noqa: S310
    if remote.user is not None or remote.password is not None:
        token = base64.b64encode(f"{remote.user or ''}:{remote.password or ''}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")
    handlers: list[Any] = [urllib.request.ProxyHandler({}), _NoRedirects()]
    if remote.url.startswith("https://"):
        handlers.append(urllib.request.HTTPSHandler(context=tls_context(remote)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise UnreachableError(_http_error(remote, exc.code)) from None
    except urllib.error.URLError as exc:
        raise UnreachableError(f"cannot reach the daemon at {remote.url}: {_reason(exc.reason)}") from None
    except (OSError, ValueError) as exc:
        raise UnreachableError(f"cannot reach the daemon at {remote.url}: {_reason(exc)}") from None
    return _parse(remote, body)


def tls_context(remote: Remote) -> ssl.SSLContext:
    """Verify the daemon: against ``ca_file`` alone when given, else the system CAs and the
    daemon's own certificate from the configuration (for a self-signed one)."""
    try:
        context = ssl.create_default_context(cafile=remote.ca_file)
        if remote.ca_file is None and remote.trusted_cert is not None:
            context.load_verify_locations(remote.trusted_cert)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if remote.client_cert is not None:
            context.load_cert_chain(remote.client_cert, remote.client_key)
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: no such file") from None
    except PermissionError as exc:
        raise ConfigError(f"{exc.filename}: permission denied") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the CA or client certificate: {_reason(exc)}") from None
    return context


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError


def _http_error(remote: Remote, code: int) -> str:
    where = f"the daemon at {remote.url}"
    if code == 401:  # noqa: PLR2004
        if remote.user is None and remote.password is None:
            return (
                f"{where} asks for credentials: give --user and --password-file (or POOLWATCH_HTTP_PASSWORD)"
            )
        return f"{where} refused the credentials given"
    if code == 404:  # noqa: PLR2004
        return f"{where} has no /status: is it poolwatch?"
    return f"{where} answered HTTP {code}"


def _reason(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({reason.verify_message}): give the CA with --ca-file"
    if isinstance(reason, ssl.SSLError):
        return f"TLS handshake failed ({reason.reason or type(reason).__name__}): does it serve https?"
    if isinstance(reason, socket.timeout | TimeoutError):
        return "no answer in time"
    if isinstance(reason, socket.gaierror):
        return "host name not found"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(reason, str):
        return reason
    return type(reason).__name__


def _parse(remote: Remote, body: bytes) -> StatusDoc:
    if len(body) > MAX_BYTES:
        raise UnreachableError(f"the daemon at {remote.url} sent more than {MAX_BYTES >> 20} MB")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise UnreachableError(f"the daemon at {remote.url} did not answer JSON: is it poolwatch?") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise UnreachableError(
            f"the daemon at {remote.url} answers status schema {version!r}; this poolwatch reads "
            f"schema {SCHEMA_VERSION} (run the same version on both sides)"
        )
    result: StatusDoc = doc
    return result
