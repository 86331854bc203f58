"""HTTP/1.x on the wire: request heads checked and parsed into WSGI environs, responses serialised.

Strict where leniency costs a server (a request line that can never be served is refused as soon
as it is complete, or as soon as it holds a byte no request line can hold, so an HTTP/0.9 request
or a TLS hello on the plain port is answered at once instead of waiting for a head that never
comes), lenient where clients differ harmlessly (bare ``\\n`` line ends, empty lines before the
request line, HTTP/1.x minor versions above 1). Request bodies are never read: the endpoint only
serves GET and HEAD, so a request announcing a body is answered and its connection closed.
"""

from __future__ import annotations

import re
import sys
import urllib.parse
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

MAX_HEADERS = 100  # as http.client and the stdlib server allow

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
# What a request line can hold: visible ASCII and spaces (and the CR of its CRLF, checked apart).
_NOT_IN_REQUEST_LINE = re.compile(rb"[^\x20-\x7e\r]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class HeadError(Exception):
    """A request head the server answers with ``status`` and then closes the connection."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


BAD_REQUEST = "400 Bad Request"
TOO_LARGE = "431 Request Header Fields Too Large"
BAD_VERSION = "505 HTTP Version Not Supported"


@dataclass(frozen=True)
class Request:
    """A parsed request head."""

    method: str
    target: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]
    keep_alive: bool
    line: str


def skip_empty_lines(buffer: bytearray) -> bool:
    """Drop the empty lines a client may send before a request line (RFC 9112 section 2.2)."""
    start = 0
    while buffer[start : start + 2] == b"\r\n" or buffer[start : start + 1] == b"\n":
        start += 2 if buffer[start : start + 1] == b"\r" else 1
    del buffer[:start]
    return start > 0


def head_end(buffer: bytearray, start: int = 0) -> int:
    """The index just past the empty line ending the head, or -1 while it has not arrived."""
    found = _HEAD_END.search(buffer, max(0, start - 3))
    return -1 if found is None else found.end()


def early_error(buffer: bytearray, start: int = 0) -> tuple[str | None, bool]:
    """Check the bytes from ``start`` of a request line still arriving.

    Returns the status to refuse it with now (or None while it may still be served), and whether
    the line is complete, so the caller never checks the same bytes twice.
    """
    newline = buffer.find(b"\n", start)
    end = len(buffer) if newline < 0 else newline
    if _NOT_IN_REQUEST_LINE.search(buffer, start, end):
        return BAD_REQUEST, True
    if newline < 0:
        return None, False
    return _request_line_error(bytes(buffer[:newline]).rstrip(b"\r")), True


def _request_line_error(line: bytes) -> str | None:
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return BAD_REQUEST  # HTTP/0.9 ("GET /metrics"), a missing or unreadable version, garbage
    if int(match[3]) != 1:
        return BAD_VERSION
    return None


def parse(head: bytes) -> Request:
    """The request in ``head`` (request line to empty line inclusive); raises ``HeadError``."""
    lines = head.decode("latin-1").split("\n")
    request_line = lines[0].rstrip("\r")
    status = _request_line_error(request_line.encode("latin-1"))
    if status is not None:
        raise HeadError(status)
    method, target, version_text = request_line.split(" ")
    version = (1, int(version_text[-1]))
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw.rstrip("\r")
        if not line:
            continue
        name, colon, value = line.partition(":")
        # No space before the colon, no folded continuation lines (RFC 9112 section 5).
        if not colon or not _TOKEN.fullmatch(name):
            raise HeadError(BAD_REQUEST)
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise HeadError(BAD_REQUEST)
        headers.append((name, value))
    if len(headers) > MAX_HEADERS:
        raise HeadError(TOO_LARGE)
    return Request(method, target, version, headers, _keep_alive(version, headers), request_line)


def _keep_alive(version: tuple[int, int], headers: list[tuple[str, str]]) -> bool:
    options: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == "connection":
            options.update(token.strip().lower() for token in value.split(","))
        elif lowered == "transfer-encoding":
            return False  # a body this server will not read
        elif lowered == "content-length":
            if not value.isdigit():
                raise HeadError(BAD_REQUEST)
            if int(value) > 0:
                return False
    if "close" in options:
        return False
    return version >= (1, 1) or "keep-alive" in options


def environ(
    request: Request, *, server: tuple[str, int], client: tuple[str, int], scheme: str
) -> dict[str, Any]:
    """The WSGI environ of ``request`` (PEP 3333), with an empty body."""
    target = request.target
    if target.startswith(("http://", "https://")):
        split = urllib.parse.urlsplit(target)
        target = split.path + ("?" + split.query if split.query else "")
    path, _, query = target.partition("?")
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": f"HTTP/{request.version[0]}.{request.version[1]}",
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        if "_" in name:
            continue  # X_Forwarded_For must not pass for X-Forwarded-For (as wsgiref skips it)
        key = name.upper().replace("-", "_")
        key = key if key in {"CONTENT_TYPE", "CONTENT_LENGTH"} else "HTTP_" + key
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


def call(
    app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]], environ: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a WSGI application on ``environ``: its status, headers and whole body."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return written.append

    result = app(environ, start_response)
    try:
        body = b"".join([*written, *result])
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started[0], started[1], body


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding"})


def response(
    status: str, headers: list[tuple[str, str]], body: bytes, *, head_only: bool, keep_alive: bool
) -> bytes:
    """The bytes of a whole response; ``Content-Length`` added when the application left it out."""
    lines = [f"HTTP/1.1 {status}"]
    has_length = False
    for name, value in headers:
        lowered = name.lower()
        if lowered in _HOP_BY_HOP:
            continue
        has_length = has_length or lowered == "content-length"
        lines.append(f"{name}: {value}")
    if not has_length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error(status: str) -> bytes:
    """A plain-text answer to a request the server refuses itself; the connection closes after it."""
    body = (status.split(" ", 1)[1].lower() + "\n").encode()
    return response(
        status, [("Content-Type", "text/plain; charset=utf-8")], body, head_only=False, keep_alive=False
    )
