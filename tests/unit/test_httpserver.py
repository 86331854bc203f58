"""The endpoint's server on real loopback sockets: keep-alive, bounded threads, floods of idle and
half-open connections, failed TLS handshakes, HTTP/0.9, and the listen backlog."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import subprocess
import threading
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from poolwatch import http as endpoint_module
from poolwatch.config import validate
from poolwatch.errors import ConfigError
from poolwatch.http import Endpoint
from poolwatch.httpserver import HttpServer, Limits
from tests.daemonkit import wait_for
from tests.statusdocs import document

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

LOOPBACK = "127.0.0.1"


def endpoint() -> Endpoint:
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc()
    return Endpoint(registry, healthy=lambda: True, ready=lambda: True, status=document)


@contextlib.contextmanager
def serving(
    app: Any = None, tls: ssl.SSLContext | None = None, *, start: bool = True, **limits: Any
) -> Iterator[HttpServer]:
    server = HttpServer(app or endpoint(), LOOPBACK, 0, limits=Limits(**limits), tls=tls)
    if start:
        server.start()
    try:
        yield server
    finally:
        server.stop()


def scrape(server: HttpServer, path: str = "/metrics", timeout: float = 10) -> int:
    connection = http.client.HTTPConnection(*server.server_address, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def connect(server: HttpServer, timeout: float = 10) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=timeout)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (reads up to EOF; False if it is still open)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def http_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("poolwatch-http")]


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    with serving() as server:
        connection = http.client.HTTPConnection(*server.server_address, timeout=10)
        for path in ["/metrics", "/healthz", "/nope", "/metrics"]:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.getheader("Connection") == "keep-alive"
            assert b"things_total" in response.read() or path != "/metrics"
        connection.close()
        assert server.accepted == 1


def test_pipelined_requests_are_answered_in_order() -> None:
    with serving() as server, connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert received.count(b"HTTP/1.1 ") == 2
        assert b"HTTP/1.1 404 Not Found" in received.split(b"ok\n", 1)[1]


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer() -> None:
    with serving() as server:
        for request in [
            b"GET /healthz HTTP/1.0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        ]:
            with connect(server) as sock:
                sock.sendall(request)
                received = b""
                while chunk := sock.recv(65536):  # ends: the server closes
                    received += chunk
                assert received.startswith(b"HTTP/1.1 200 OK")
                assert b"Connection: close" in received


def test_head_requests_get_headers_only() -> None:
    with serving() as server, connect(server) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"Content-Length: 3" in head
        assert body == b""


def test_an_http_0_9_request_is_answered_at_once_not_at_the_request_timeout() -> None:
    # An HTTP/0.9 request is one line with no version and no empty line after it: a server waiting
    # for the end of a head would hold it until request_timeout (60 s here; the recv gives up at 10).
    with serving(request_timeout=60) as server, connect(server, timeout=10) as sock:
        sock.sendall(b"GET /metrics\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
        while sock.recv(65536):
            pass  # and the server closes the connection


@pytest.mark.parametrize(
    "first_bytes",
    [bytes.fromhex("160301002a0100002603030000"), b"\x00\x01\x02", b"GET /metrics HTTP/2.0\r\n"],
    ids=["tls-hello-on-plain-port", "binary", "http-2-line"],
)
def test_a_request_line_that_cannot_be_served_is_refused_before_the_head_ends(first_bytes: bytes) -> None:
    with serving(request_timeout=60) as server, connect(server, timeout=10) as sock:
        sock.sendall(first_bytes)
        assert sock.recv(65536).split(b" ", 2)[1] in {b"400", b"505"}


def test_threads_stay_fixed_however_many_connections_are_open() -> None:
    with serving(max_connections=200, workers=3) as server:
        assert len(http_threads()) == 4
        sockets = [connect(server) for _ in range(100)]
        try:
            for sock in sockets[:50]:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the end of it
            wait_for(lambda: server.open_connections == 100, 10, "all connections accepted")
            assert scrape(server) == 200
            assert len(http_threads()) == 4
        finally:
            for sock in sockets:
                sock.close()


def test_a_flood_of_idle_connections_does_not_refuse_scrapes() -> None:
    cap = 20
    opened: list[socket.socket] = []
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                opened.append(socket.create_connection(server.server_address, timeout=5))
            stop.wait(0.002)

    with serving(max_connections=cap, request_timeout=60) as server:
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        statuses = []
        try:
            for round_no in range(1, 31):
                # The cap is overrun again between any two scrapes: every scrape meets a full house.
                def flooded(n: int = round_no) -> bool:
                    return len(opened) >= n * cap

                wait_for(flooded, 30, "the flood goes on")
                statuses.append(scrape(server))
            stop.set()
            flooder.join(10)
            # Every flood connection past the cap made room by closing an older idle one.
            wait_for(lambda: server.evicted >= len(opened) - cap, 30, "the flood accepted")
            assert server.open_connections <= cap
        finally:
            stop.set()
            flooder.join(10)
            for sock in opened:
                sock.close()
        assert statuses == [200] * 30


def test_at_the_cap_the_connection_idle_the_longest_is_closed_first() -> None:
    with serving(max_connections=5, request_timeout=60) as server:
        idle = []
        for n in range(5):
            idle.append(connect(server))

            def accepted(n: int = n) -> bool:
                return server.accepted == n + 1

            wait_for(accepted, 10, "accepted in order")
        with connect(server) as newest:
            wait_for(lambda: server.accepted == 6, 10, "the sixth accepted")
            wait_for(lambda: closed_by_server(idle[0]), 10, "the oldest closed")
            assert not any(closed_by_server(sock) for sock in idle[1:])
            newest.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            newest.settimeout(10)
            assert newest.recv(65536).startswith(b"HTTP/1.1 200 OK")
        for sock in idle:
            sock.close()


def test_a_keep_alive_connection_between_requests_outlasts_a_flood_of_idle_ones() -> None:
    with serving(max_connections=5, request_timeout=60) as server:
        scraper = http.client.HTTPConnection(*server.server_address, timeout=10)
        scraper.request("GET", "/metrics")
        scraper.getresponse().read()
        idle = [connect(server) for _ in range(20)]  # each past the cap closes an idle one
        wait_for(lambda: server.accepted == 21, 10, "the flood accepted")
        wait_for(lambda: server.evicted == 16, 10, "the flood pushed out")
        scraper.request("GET", "/metrics")
        assert scraper.getresponse().status == 200
        assert server.accepted == 21, "the same connection"
        for sock in idle:
            sock.close()
        scraper.close()


def test_requests_being_answered_are_never_evicted_and_newcomers_wait_their_turn() -> None:
    release = threading.Event()
    inner = endpoint()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/healthz":
            release.wait(30)
        return inner(environ, start_response)

    with serving(app, max_connections=2, workers=2) as server:
        results: list[int] = []
        slow = [
            threading.Thread(target=lambda: results.append(scrape(server, "/healthz", 30)), daemon=True)
            for _ in range(2)
        ]
        for thread in slow:
            thread.start()
        wait_for(lambda: server.open_connections == 2 and not server._parked, 10, "both being answered")
        late = threading.Thread(target=lambda: results.append(scrape(server, "/metrics", 30)), daemon=True)
        late.start()
        # Nothing can make room: the newcomer is left in the listen queue, not accepted and closed.
        wait_for(lambda: not server._accepting, 10, "accepting paused")
        assert server.accepted == 2
        release.set()
        for thread in [*slow, late]:
            thread.join(30)
        assert results == [200, 200, 200]


def test_half_open_connections_are_closed_at_their_deadline() -> None:
    with serving(request_timeout=0.5) as server:
        sockets = [connect(server) for _ in range(10)]
        try:
            sockets[0].sendall(b"GET /metrics HTTP/1.1\r\nHost")  # a head that never ends
            wait_for(lambda: all(closed_by_server(sock) for sock in sockets), 10, "all cut")
            wait_for(lambda: server.open_connections == 0, 10, "none left open")
            assert server.expired == 10
            assert server.tracked == 0
        finally:
            for sock in sockets:
                sock.close()


def test_a_keep_alive_connection_gets_the_idle_timeout_not_the_request_timeout() -> None:
    with serving(request_timeout=0.2, idle_timeout=60) as server:
        connection = http.client.HTTPConnection(*server.server_address, timeout=10)
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        first = server.expired
        # A new connection with no request is cut at request_timeout; the served one stays.
        with connect(server) as fresh:
            wait_for(lambda: closed_by_server(fresh), 10, "the fresh connection cut")
        assert server.expired == first + 1
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        assert server.accepted == 2
        connection.close()


def _connects(server: HttpServer, count: int) -> int:
    """How many of ``count`` simultaneous connects complete while nobody accepts."""
    done: list[socket.socket] = []
    barrier = threading.Barrier(count)

    def one() -> None:
        barrier.wait()
        with contextlib.suppress(OSError):
            done.append(socket.create_connection(server.server_address, timeout=2))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for sock in done:
        sock.close()
    return len(done)


def test_the_configured_backlog_holds_a_burst_of_connects() -> None:
    # Not started: nothing accepts, so the kernel's queue alone holds the burst. A queue of 5 (the
    # stdlib server's default) overflows; the connects it drops are not answered within 2 s.
    with serving(start=False, backlog=128) as server:
        assert _connects(server, 60) == 60
    with serving(start=False, backlog=5) as server:
        assert _connects(server, 60) < 60


def test_the_backlog_and_the_other_limits_come_from_the_settings() -> None:
    settings = validate({"http": {"backlog": 7, "max_connections": 9, "request_timeout": 3}}).http
    limits = endpoint_module.limits(settings)
    assert (limits.backlog, limits.max_connections, limits.request_timeout) == (7, 9, 3)
    assert endpoint_module.limits(validate({}).http).backlog == 128
    for bad in (0, 70_000, "many"):
        with pytest.raises(ConfigError, match=r"http\.backlog"):
            validate({"http": {"backlog": bad}})


# ------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cert")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        cwd=tmp,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return tmp


def server_context(certificate: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    return context


def tls_scrape(server: HttpServer, certificate: Path) -> int:
    context = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
    connection = http.client.HTTPSConnection(*server.server_address, timeout=10, context=context)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_failed_tls_handshakes_leave_nothing_behind(
    certificate: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="poolwatch.httpserver")
    with serving(tls=server_context(certificate), request_timeout=60) as server:
        assert tls_scrape(server, certificate) == 200
        for _ in range(300):
            with connect(server) as sock:  # plain HTTP on the TLS port
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass
        wait_for(lambda: server.failed_handshakes == 300, 20, "every handshake failed")
        wait_for(lambda: server.open_connections == 0, 10, "every connection closed")
        # Nothing kept about them, and nothing left for the selector thread to wake up for.
        assert server.tracked == 0
        assert tls_scrape(server, certificate) == 200
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == 300
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in failures)
    assert not any(r.exc_info for r in caplog.records)


def test_stalled_tls_handshakes_wait_in_the_selector_and_are_cut_at_the_deadline(
    certificate: Path,
) -> None:
    with serving(tls=server_context(certificate), request_timeout=0.5, max_connections=100) as server:
        stalled = [connect(server) for _ in range(20)]
        try:
            stalled[0].sendall(bytes.fromhex("160301002a0100002603030000"))  # half a ClientHello
            assert tls_scrape(server, certificate) == 200  # while they stall
            wait_for(lambda: all(closed_by_server(sock) for sock in stalled), 10, "all cut")
            wait_for(lambda: server.open_connections == 0, 10, "none left open")
            assert server.tracked == 0
        finally:
            for sock in stalled:
                sock.close()
