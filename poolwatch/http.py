"""The HTTP endpoint: /metrics, /healthz, /readyz, /status (JSON) and a small status page at /.

A WSGI app with what an exposed exporter needs: 404 for unknown paths, 405 for methods other than
GET/HEAD, HTTP basic auth against bcrypt hashes (``basicauth``), optional TLS. Nothing here touches
a database: every answer comes from memory. ``serve`` runs it on ``httpserver``, which bounds what
slow and hostile clients cost.
"""

from __future__ import annotations

import math
import ssl
from typing import TYPE_CHECKING, Any

from prometheus_client import make_wsgi_app

from poolwatch import exposition, statuspage
from poolwatch.basicauth import BasicAuth
from poolwatch.errors import ConfigError
from poolwatch.gzipparts import GzipParts
from poolwatch.httpserver import HttpServer, Limits

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterable

    from prometheus_client import CollectorRegistry

    from poolwatch.config import HttpSettings
    from poolwatch.status import StatusDoc

StartResponse = Any
Environ = dict[str, Any]

ROUTES = ("/", "/metrics", "/healthz", "/readyz", "/status")


class Endpoint:
    """The WSGI application. Health, readiness and status come in as callables."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        status: Callable[[], StatusDoc],
        basic_auth_users: dict[str, bytes] | None = None,
    ) -> None:
        # OpenMetrics only for a client that will not take the text format: Prometheus accepts
        # both, and the text renderer costs a fraction of prometheus_client's (exposition.py).
        self._openmetrics_app = make_wsgi_app(registry)
        self._renderer = exposition.Renderer(registry)
        # Level 1: most of the size saving for a fifth of the CPU of the default level 9.
        self._gzip = GzipParts(level=1)
        self._healthy = healthy
        self._ready = ready
        self._status = status
        self._auth = BasicAuth(basic_auth_users or {})

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path not in ROUTES:
            return _plain(start_response, "404 Not Found", "not found\n")
        if method not in {"GET", "HEAD"}:
            return _plain(
                start_response,
                "405 Method Not Allowed",
                "method not allowed\n",
                [("Allow", "GET, HEAD")],
            )
        if self._auth:
            verdict = self._auth.verdict(
                environ.get("HTTP_AUTHORIZATION", ""), environ.get("REMOTE_ADDR", "")
            )
            if verdict.throttled:
                retry = str(math.ceil(verdict.retry_after))
                return _plain(
                    start_response, "429 Too Many Requests", "too many attempts\n", [("Retry-After", retry)]
                )
            if not verdict.allowed:
                return _plain(
                    start_response,
                    "401 Unauthorized",
                    "unauthorized\n",
                    [("WWW-Authenticate", 'Basic realm="poolwatch", charset="UTF-8"')],
                )
        if path == "/metrics":
            body = b"".join(self._metrics({**environ, "REQUEST_METHOD": "GET"}, start_response))
            # HEAD: the GET headers (prometheus_client's own app would answer 405), no body.
            return [] if method == "HEAD" else [body]
        if path == "/healthz":
            ok = self._healthy()
            return _plain(
                start_response,
                "200 OK" if ok else "503 Service Unavailable",
                "ok\n" if ok else "scheduler not running\n",
            )
        if path == "/readyz":
            ok = self._ready()
            return _plain(
                start_response,
                "200 OK" if ok else "503 Service Unavailable",
                "ready\n" if ok else "starting\n",
            )
        return statuspage.respond(environ, start_response, self._status)  # "/" and "/status"

    def _metrics(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        accept = environ.get("HTTP_ACCEPT", "")
        if "application/openmetrics-text" in accept and not ("text/plain" in accept or "*/*" in accept):
            return self._openmetrics_app(environ, start_response)  # type: ignore[no-any-return]
        parts = self._renderer.parts()
        headers = [("Content-Type", exposition.CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = self._gzip.compress(parts)
            headers.append(("Content-Encoding", "gzip"))
        else:
            body = b"".join(parts)
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]


def _plain(
    start_response: StartResponse,
    status: str,
    text: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = text.encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *(headers or [])],
    )
    return [body]


def serve(endpoint: Endpoint, settings: HttpSettings) -> tuple[HttpServer, threading.Thread]:
    """Start serving; return ``(server, thread)``. Stop with ``stop_server``."""
    host, port = settings.address
    tls = _tls_context(settings)
    try:
        server = HttpServer(endpoint, host, port, limits=limits(settings), tls=tls)
    except OSError as exc:
        raise ConfigError(f"http.listen: cannot listen on {settings.listen}: {exc.strerror}") from None
    return server, server.start()


def limits(settings: HttpSettings) -> Limits:
    """The server's limits as configured."""
    return Limits(
        max_connections=settings.max_connections,
        request_timeout=settings.request_timeout,
        max_request_bytes=settings.max_request_bytes,
        backlog=settings.backlog,
    )


def stop_server(server: HttpServer, thread: threading.Thread) -> None:
    """Stop accepting, close every connection, wait for the threads. Safe to call twice."""
    server.stop()
    thread.join(5)


def _tls_context(settings: HttpSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation would let a client make the server read in the middle of writing.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"http.tls: cannot load certificate, key or CA: {reason}") from None
    return context
