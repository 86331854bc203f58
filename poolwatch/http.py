"""The HTTP endpoint: /metrics, /healthz, /readyz, /status (JSON) and a small status page at /.

A WSGI app served by a threading server (as prometheus_client's own ``start_http_server`` does),
with what an exposed exporter needs on top: 404 for unknown paths, 405 for methods other than
GET/HEAD, optional TLS (handshake on the request thread, never on the accept loop) and HTTP basic
auth against bcrypt hashes. Nothing here touches a database: every answer comes from memory.

Slow and hostile clients cost bounded resources: at most ``max_connections`` are served at once (more
are closed at accept), each connection is shut down ``request_timeout`` after it was accepted
whatever it is doing (a per-read socket timeout alone lets a client trickling one byte at a time stay
forever), and a request head larger than ``max_request_bytes`` is answered 431 and closed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import logging
import socket
import ssl
import threading
import time
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bcrypt
from prometheus_client import make_wsgi_app

from poolwatch import exposition, statuspage
from poolwatch.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client import CollectorRegistry

    from poolwatch.config import HttpSettings
    from poolwatch.status import StatusDoc

log = logging.getLogger(__name__)

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
        self._healthy = healthy
        self._ready = ready
        self._status = status
        self._users = basic_auth_users or {}
        # bcrypt is deliberately slow (~50-250 ms); cache verified header values so a Prometheus
        # scraping every second pays for it once, not every scrape.
        self._verified: set[str] = set()
        self._verified_lock = threading.Lock()

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
        if self._users and not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
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
        body = self._renderer.render()
        headers = [("Content-Type", exposition.CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            # Level 1: most of the size saving for a fifth of the CPU of the default level 9.
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return False
        with self._verified_lock:
            if header in self._verified:
                return True
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if not sep or hashed is None:
            # Spend the same time as a real check, so user names can't be probed by timing.
            bcrypt.checkpw(b"x", _DUMMY_HASH)
            return False
        try:
            matches = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            # bcrypt >= 4.1 refuses passwords over 72 bytes (as Go's bcrypt does): not ours, so 401.
            return False
        if not matches:
            return False
        with self._verified_lock:
            if len(self._verified) > 64:  # noqa: PLR2004 - a handful of scrapers, not a cache to grow
                self._verified.clear()
            self._verified.add(header)
        return True


_DUMMY_HASH = bcrypt.hashpw(b"poolwatch", bcrypt.gensalt(rounds=10))


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


class _RequestTooLargeError(OSError):
    """The request line and headers exceeded ``max_request_bytes``."""


class _LimitedReader:
    """The handler's ``rfile``, refusing to read a request head past a byte budget."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._raw.readline(size)
        self._left -= len(line)
        if self._left < 0:
            raise _RequestTooLargeError("request head too large")
        return line

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._raw.read(size)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(WSGIRequestHandler):
    """Quiet (requests are logged at DEBUG), bounded in time and size, TLS handshake on this thread."""

    timeout = 10.0
    max_request_bytes = 16384
    tls_context: ssl.SSLContext | None = None
    server: _Server

    def setup(self) -> None:
        self.server.track(self)
        if self.tls_context is not None:
            self.request.settimeout(self.timeout)
            self.request = self.tls_context.wrap_socket(self.request, server_side=True)
        super().setup()
        self.rfile = _LimitedReader(self.rfile, self.max_request_bytes)  # type: ignore[assignment]

    def handle(self) -> None:
        try:
            super().handle()
        except _RequestTooLargeError:
            self._refuse_too_large()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.debug("client %s dropped: %s", self.client_address[0], type(exc).__name__)

    def _refuse_too_large(self) -> None:
        body = b"request too large\n"
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.wfile.write(head.encode() + body)
        except OSError:
            return

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client is gone, or the connection was cut at its deadline
        finally:
            self.server.untrack(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s %s", self.client_address[0], format % args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    max_connections = 64
    request_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._open = 0  # connections accepted and not yet shut down
        self._handlers: dict[_Handler, float] = {}
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self._open >= self.max_connections
            if not full:
                self._open += 1
        if full:
            self.refused += 1
            log.debug(
                "http: %d connections open, closing one from %s", self.max_connections, client_address[0]
            )
            super().shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        # ThreadingMixIn calls this once per served connection, whatever happened to it.
        with self._lock:
            self._open -= 1
        super().shutdown_request(request)

    def track(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers[handler] = time.monotonic()

    def untrack(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.pop(handler, None)

    def service_actions(self) -> None:
        # Called by serve_forever about twice a second: cut connections past their deadline. The
        # handler object (not a file descriptor number, which could be reused) names the socket.
        deadline = time.monotonic() - self.request_timeout
        with self._lock:
            late = [handler for handler, started in self._handlers.items() if started < deadline]
        for handler in late:
            with contextlib.suppress(OSError):
                handler.request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002 - stdlib signature
        # Called from inside the server's except block: a client that misbehaved, never our state.
        log.debug("http request from %s failed", client_address[0], exc_info=True)  # noqa: LOG014


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(endpoint: Endpoint, settings: HttpSettings) -> tuple[WSGIServer, threading.Thread]:
    """Start serving on a daemon thread; return ``(server, thread)``. Stop with ``stop_server``."""
    host, port = settings.address
    handler = type(
        "Handler",
        (_Handler,),
        {
            "timeout": settings.request_timeout,
            "tls_context": _tls_context(settings),
            "max_request_bytes": settings.max_request_bytes,
        },
    )
    base = _Server6 if ":" in host else _Server
    server_class = type(
        "Server",
        (base,),
        {
            "max_connections": settings.max_connections,
            "request_timeout": settings.request_timeout,
        },
    )
    try:
        server: WSGIServer = make_server(host, port, endpoint, server_class, handler)
    except OSError as exc:
        raise ConfigError(f"http.listen: cannot listen on {settings.listen}: {exc.strerror}") from None
    thread = threading.Thread(target=server.serve_forever, name="poolwatch-http", daemon=True)
    thread.start()
    return server, thread


def stop_server(server: WSGIServer, thread: threading.Thread) -> None:
    """Stop accepting, close the socket, wait for the serving thread. Safe to call twice."""
    if thread.is_alive():
        server.shutdown()
        thread.join(5)
    server.server_close()


def _tls_context(settings: HttpSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"http.tls: cannot load certificate, key or CA: {reason}") from None
    return context
