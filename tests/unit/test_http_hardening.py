"""The endpoint under misuse: unknown paths, other methods, malformed and oversized requests, and
crowds of slow clients. After each, /metrics still answers, and quickly."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests.daemonkit import get, running_daemon, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from poolwatch.daemon import Daemon

REQUEST_TIMEOUT = 1.0
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("http")
    config = {
        "http": {"request_timeout": REQUEST_TIMEOUT, "max_connections": MAX_CONNECTIONS},
        "targets": [
            {
                "name": "embedded",
                "kind": "sqlite",
                "url": f"sqlite:///{tmp}/e.db",
                "probe": {"interval": 0.5, "timeout": 0.5},
            }
        ],
    }
    with running_daemon(config) as running:
        yield running


def _metrics_answer(daemon: Daemon) -> None:
    """/metrics still answers (a client timeout, not a timed assertion, bounds the wait)."""
    status, body = get(f"{daemon.base_url}/metrics", timeout=10)
    assert status == 200
    assert "poolwatch_up" in body


def _raw(daemon: Daemon, payload: bytes, wait: float = 3.0) -> bytes:
    """Send ``payload`` and return whatever comes back before the server closes (or ``wait``)."""
    host, port = daemon.address
    with socket.create_connection((host, port), timeout=wait) as sock:
        # The server may close while we are still sending an oversized request.
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    return received


def _server_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("poolwatch-http"))


@pytest.mark.parametrize(
    "path", ["/metricsx", "/metrics/", "/../etc/passwd", "/" + "a" * 4000, "/status.json", "/%00"]
)
def test_unknown_paths_are_404(daemon: Daemon, path: str) -> None:
    status, _ = get(f"{daemon.base_url}{path}")
    assert status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
def test_other_methods_are_405(daemon: Daemon, method: str) -> None:
    host, port = daemon.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request(method, "/metrics", body=b"x" * 10)
    response = connection.getresponse()
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"
    connection.close()


def test_head_answers_without_a_body(daemon: Daemon) -> None:
    host, port = daemon.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request("HEAD", "/metrics")
    response = connection.getresponse()
    assert response.status == 200
    assert response.read() == b""
    connection.close()


MALFORMED = {
    "binary-garbage": b"\x00\x01\x02\xff\r\n\r\n",
    "no-path": b"GET\r\n\r\n",
    "bad-version": b"GET /metrics HTTP/9.9\r\n\r\n",
    "version-text": b"GET /metrics HTTP/one\r\n\r\n",
    "header-without-colon": b"GET /metrics HTTP/1.1\r\nHost\r\n\r\n",
    "bare-newlines": b"GET /metrics HTTP/1.1\nHost: x\n\n",
    "negative-length": b"POST /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    "huge-length-post": b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nabc",
    "bad-auth-header": b"GET /metrics HTTP/1.1\r\nAuthorization: Basic !!!\r\n\r\n",
    "tls-to-plain-port": bytes.fromhex("160301002a0100002603030000"),
    "half-request-then-close": b"GET /met",
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_refused_and_serving_goes_on(daemon: Daemon, payload: bytes) -> None:
    answer = _raw(daemon, payload)
    assert b"Traceback" not in answer
    if answer:  # a half request is closed at its deadline without an answer
        assert answer.startswith(b"HTTP/1.1 "), answer[:200]
        assert int(answer.split(b" ", 2)[1]) in {200, 400, 401, 404, 405, 431, 505}, answer[:200]
    _metrics_answer(daemon)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(3000)) + b"\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
    ],
    ids=["long-request-line", "long-header", "many-headers-over-budget", "too-many-headers"],
)
def test_oversized_requests_are_refused(daemon: Daemon, payload: bytes, status: int) -> None:
    answer = _raw(daemon, payload)
    assert answer.startswith(b"HTTP/1."), answer[:100]
    # A request line over the byte budget may be refused as a whole head (431) before its length is
    # judged (414): both close the connection without serving it.
    assert int(answer.split(b" ", 2)[1]) in ({414, 431} if status == 414 else {status})
    _metrics_answer(daemon)


def _slow_client(
    daemon: Daemon, stop: threading.Event, closed: list[float], started: float, sending: threading.Semaphore
) -> None:
    """A client that trickles its request one byte at a time and never finishes it."""
    host, port = daemon.address
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            sending.release()
            while not stop.is_set():
                sock.sendall(b"X")
                stop.wait(0.2)
                sock.setblocking(False)
                try:
                    if sock.recv(1024) == b"":
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
    except OSError:
        pass
    closed.append(time.monotonic() - started)


def test_slow_clients_are_cut_at_their_deadline_and_metrics_stays_fast(daemon: Daemon) -> None:
    stop = threading.Event()
    closed: list[float] = []
    started = time.monotonic()
    sending = threading.Semaphore(0)
    clients = [
        threading.Thread(target=_slow_client, args=(daemon, stop, closed, started, sending), daemon=True)
        for _ in range(MAX_CONNECTIONS // 2)
    ]
    for client in clients:
        client.start()
    try:
        for _ in clients:  # every slow client is connected and trickling before the scrapes
            assert sending.acquire(timeout=10)
        for _ in range(3):
            _metrics_answer(daemon)
        # A per-read timeout would never fire: each client sends a byte every 0.2 s. The deadline
        # counts from accept.
        wait_for(lambda: len(closed) == len(clients), REQUEST_TIMEOUT + 3, "every slow client cut")
    finally:
        stop.set()
    assert max(closed) < REQUEST_TIMEOUT + 3
    _metrics_answer(daemon)


def test_a_crowd_beyond_the_cap_costs_no_threads_and_scrapes_go_on_during_it(daemon: Daemon) -> None:
    host, port = daemon.address
    threads = _server_threads()
    sockets = []
    try:
        for _ in range(MAX_CONNECTIONS * 3):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the end of it
            sockets.append(sock)
        # The newest connections pushed the oldest waiting ones out: scrapes are served meanwhile.
        _metrics_answer(daemon)
        assert _server_threads() == threads
    finally:
        for sock in sockets:
            sock.close()
    _metrics_answer(daemon)
