"""The endpoint's HTTP/1.1 server: one selector thread holds every waiting socket, a few workers answer.

A connection costs a thread only while a complete request is being answered. Through its TLS
handshake (non-blocking, driven by the selector), while its request head trickles in, between
keep-alive requests and while a response drains to a slow reader, it is parked in the selector,
which costs a file descriptor and a few hundred bytes. That is waitress's shape; gunicorn's gthread
worker instead hands each new connection to a thread, where a client that sends nothing holds it.

Limits (``Limits``; all but ``idle_timeout`` and ``workers`` are ``http`` settings):

* ``request_timeout``: from accept (or the first byte after a keep-alive pause) to a complete
  request head, TLS handshake included; and again for writing a response. Counted per connection,
  not per read, so a client trickling a byte at a time is cut all the same.
* ``idle_timeout``: how long a keep-alive connection may wait for its next request.
* ``max_connections``: open connections. At the cap, a new connection evicts the one parked the
  longest that is not receiving a response, a never-answered one (idle, slow or stalled) before a
  keep-alive one: a flood of idle connections churns through the cap instead of refusing everyone
  else. When every connection is being answered, accepting pauses and new connections wait in the
  listen queue (``backlog``).
* ``max_request_bytes``: a head larger than this is answered 431.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from poolwatch import httpwire
from poolwatch.httpconn import DRAINING, HANDSHAKE, HEAD, READ, WORKING, WRITE, WRITING, Connection, reason

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # connections taken per wake-up, so a flood cannot starve the sockets already open
# After a response that closes the connection: stop sending, then read what the client still sends
# until it closes too (bounded), so unread bytes do not turn the close into a reset that can
# destroy the response on its way.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 18


@dataclass(frozen=True)
class Limits:
    """What one connection and all of them together may cost."""

    max_connections: int = 64
    request_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_request_bytes: int = 16384
    backlog: int = 128
    workers: int = 4


class HttpServer:
    """Serves ``app`` (WSGI) on ``host:port`` with ``limits``; TLS when ``tls`` is given."""

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        *,
        limits: Limits,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._limits = limits
        self._tls = tls
        self._clock = clock
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(limits.backlog)
            self._listener.settimeout(0)
        except OSError:
            self._listener.close()
            raise
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._scheme = "https" if tls else "http"
        self._selector = selectors.DefaultSelector()
        self._waker, self._wake_end = socket.socketpair()
        self._waker.settimeout(0)
        self._wake_end.settimeout(0)
        self._jobs: queue.SimpleQueue[tuple[Connection, httpwire.Request] | None] = queue.SimpleQueue()
        self._answered: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        # Insertion order is parking order: the first entry is the one to evict.
        self._parked: dict[Connection, None] = {}
        self._deadlines: list[tuple[float, int, Connection]] = []
        self._seq = itertools.count()
        self._open = 0
        self._accepting = False
        self._accept_again_at = 0.0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        # Read by tests and benchmarks; written by the selector thread only.
        self.accepted = self.evicted = self.expired = self.failed_handshakes = 0

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def tracked(self) -> int:
        """Entries the server holds about connections (parked ones and their deadlines)."""
        return len(self._parked) + len(self._deadlines)

    def start(self) -> threading.Thread:
        """Start the selector thread and the workers; return the selector thread."""
        loop = threading.Thread(target=self._serve, name="poolwatch-http", daemon=True)
        self._threads = [loop] + [
            threading.Thread(target=self._work, name=f"poolwatch-http-{n}", daemon=True)
            for n in range(self._limits.workers)
        ]
        for thread in self._threads:
            thread.start()
        return loop

    def stop(self) -> None:
        """Close the listener and every connection; wait for the threads. Safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake()
        if self._threads:
            deadline = time.monotonic() + 5
            self._threads[0].join(5)
            for _ in self._threads[1:]:
                self._jobs.put(None)
            for thread in self._threads[1:]:
                # A worker still answering finishes on its own; five seconds in all are waited.
                thread.join(max(0.0, deadline - time.monotonic()))
        else:
            self._close_all()
        with contextlib.suppress(queue.Empty):
            while True:
                self._answered.get_nowait().sock.close()
        self._waker.close()
        self._wake_end.close()

    # ------------------------------------------------------------------------- selector thread

    def _serve(self) -> None:
        self._selector.register(self._wake_end, READ, None)
        self._resume_accepting()
        try:
            while not self._stopping.is_set():
                for key, mask in self._selector.select(self._timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.data is None:
                        self._drain_wakeups()
                    else:
                        self._ready(key.data, mask)
                self._take_back()
                self._expire()
                if not self._accepting:
                    self._resume_accepting()
        finally:
            self._close_all()

    def _timeout(self) -> float | None:
        wake_at = [entry[0] for entry in self._deadlines[:1]]
        if not self._accepting and self._accept_again_at:
            wake_at.append(self._accept_again_at)
        return max(0.0, min(wake_at) - self._clock()) if wake_at else None

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            victim = None
            if self._open >= self._limits.max_connections:
                victim = self._victim()
                if victim is None:
                    # Everything open is being answered: new clients wait in the listen queue.
                    self._pause_accepting()
                    return
            try:
                sock, client = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors or buffers: back off briefly instead of spinning.
                log.warning("http: cannot accept connections: %s", exc.strerror or exc)
                self._pause_accepting(until=self._clock() + 0.5)
                return
            if victim is not None:
                log.debug("http %s: closed to make room (%d connections open)", victim.client[0], self._open)
                self.evicted += 1
                self._close(victim)
            self._adopt(sock, (str(client[0]), int(client[1])))

    def _adopt(self, sock: socket.socket, client: tuple[str, int]) -> None:
        self._open += 1
        self.accepted += 1
        sock.settimeout(0)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock, client, HEAD)
        if self._tls is not None:
            try:
                conn.sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError) as exc:
                log.debug("http %s: TLS set-up failed: %s", client[0], reason(exc))
                self._close(conn)
                return
            conn.state = HANDSHAKE
        self._park(conn, READ, self._limits.request_timeout)

    def _victim(self) -> Connection | None:
        """The connection to close for a newcomer: parked the longest, not receiving a response.

        One that was never answered (idle since accept, trickling, stalled in its handshake) or
        is closing goes before a keep-alive connection between two answered requests, so a flood
        of idle connections cannot push out the connection a scraper keeps.
        """
        served = None
        for conn in self._parked:
            if conn.state == WRITING:
                continue
            if not conn.served or conn.state == DRAINING:
                return conn
            served = served or conn
        return served

    def _pause_accepting(self, until: float = 0.0) -> None:
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
        self._accept_again_at = until

    def _resume_accepting(self) -> None:
        if self._stopping.is_set() or self._accepting:
            return
        if self._accept_again_at and self._clock() < self._accept_again_at:
            return
        if self._open >= self._limits.max_connections and self._victim() is None:
            return
        self._selector.register(self._listener, READ, None)
        self._accepting = True
        self._accept_again_at = 0.0

    def _ready(self, conn: Connection, _mask: int) -> None:
        if not conn.events:
            return  # closed earlier in this round (evicted for a newcomer, say)
        try:
            if conn.state == HANDSHAKE:
                self._handshake(conn)
            elif conn.state == HEAD:
                self._read(conn)
            elif conn.state == WRITING:
                self._write(conn)
            elif conn.state == DRAINING:
                self._drain(conn)
        except Exception:
            # A fault of ours, not the client's: it costs this connection, never the server.
            log.exception("http %s: serving the connection failed", conn.client[0])
            if conn.events:
                self._close(conn)

    def _handshake(self, conn: Connection) -> None:
        outcome = conn.handshake()
        if outcome is False:
            self.failed_handshakes += 1
            self._close(conn)
        elif outcome is True:
            conn.state = HEAD
            self._watch(conn, READ)
            self._read(conn)  # the request may have come with the handshake's last flight
        else:
            self._watch(conn, outcome)

    def _read(self, conn: Connection) -> None:
        outcome = conn.receive(self._limits.max_request_bytes)
        if outcome is False:
            self._close(conn)
            return
        self._watch(conn, READ if outcome is True else outcome)
        self._examine(conn)

    def _examine(self, conn: Connection) -> None:
        """Dispatch the request once its head is whole; refuse it as soon as it cannot be served."""
        buffer = conn.buffer
        if conn.idle and buffer:
            conn.idle = False
            self._set_deadline(conn, self._limits.request_timeout)
        if not conn.line_done and httpwire.skip_empty_lines(buffer):
            conn.scanned = 0
        if not conn.line_done:
            status, conn.line_done = httpwire.early_error(buffer, conn.scanned)
            if status is not None:
                self._refuse(conn, status)
                return
        end = httpwire.head_end(buffer, conn.scanned)
        conn.scanned = len(buffer)
        if end < 0 or end > self._limits.max_request_bytes:
            if len(buffer) > self._limits.max_request_bytes:
                self._refuse(conn, httpwire.TOO_LARGE)
            elif conn.eof:
                self._close(conn)  # gone before finishing a request: nothing to answer
            return
        head = bytes(buffer[:end])
        del buffer[:end]
        conn.scanned = 0
        conn.line_done = False
        try:
            request = httpwire.parse(head)
        except httpwire.HeadError as exc:
            self._refuse(conn, exc.status)
            return
        conn.keep_alive = request.keep_alive and not conn.eof
        self._unpark(conn)
        conn.state = WORKING
        self._jobs.put((conn, request))

    def _refuse(self, conn: Connection, status: str) -> None:
        log.debug("http %s: refused: %s", conn.client[0], status)
        conn.keep_alive = False
        conn.out = memoryview(httpwire.error(status))
        self._start_writing(conn)

    def _start_writing(self, conn: Connection) -> None:
        conn.state = WRITING
        self._park(conn, WRITE, self._limits.request_timeout)
        self._write(conn)

    def _write(self, conn: Connection) -> None:
        if not conn.send():
            self._close(conn)
        elif conn.out:
            self._watch(conn, WRITE)
        else:
            self._answered_fully(conn)

    def _answered_fully(self, conn: Connection) -> None:
        conn.served += 1
        if conn.eof:
            self._close(conn)
        elif not conn.keep_alive or self._stopping.is_set():
            self._linger(conn)
        else:
            conn.state = HEAD
            conn.idle = not conn.buffer
            wait = self._limits.idle_timeout if conn.idle else self._limits.request_timeout
            self._park(conn, READ, wait)
            if conn.buffer:
                self._examine(conn)  # a pipelined request arrived with the previous one

    def _linger(self, conn: Connection) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = DRAINING
        conn.buffer.clear()
        conn.scanned = 0
        self._park(conn, READ, min(LINGER_SECONDS, self._limits.request_timeout))

    def _drain(self, conn: Connection) -> None:
        if conn.discard(LINGER_BYTES):
            self._close(conn)

    def _take_back(self) -> None:
        """Connections the workers have answered: send the rest, then keep alive or close."""
        with contextlib.suppress(queue.Empty):
            while True:
                conn = self._answered.get_nowait()
                if conn.broken:
                    self._close(conn)
                elif conn.out:
                    self._start_writing(conn)
                else:
                    self._answered_fully(conn)

    def _expire(self) -> None:
        now = self._clock()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, seq, conn = heapq.heappop(deadlines)
            if conn.seq != seq or conn not in self._parked:
                continue  # superseded by a later deadline, or already closed
            self.expired += 1
            log.debug("http %s: closed at its deadline (%s)", conn.client[0], conn.state)
            self._close(conn)
        if len(deadlines) > 2 * len(self._parked) + 64:
            # Entries of connections that moved on: rebuild so they cannot pile up.
            self._deadlines = [entry for entry in deadlines if entry[2].seq == entry[1]]
            heapq.heapify(self._deadlines)

    def _park(self, conn: Connection, events: int, wait: float) -> None:
        self._parked.pop(conn, None)
        self._parked[conn] = None
        self._set_deadline(conn, wait)
        self._watch(conn, events)

    def _set_deadline(self, conn: Connection, wait: float) -> None:
        conn.seq = next(self._seq)
        heapq.heappush(self._deadlines, (self._clock() + wait, conn.seq, conn))

    def _watch(self, conn: Connection, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _unpark(self, conn: Connection) -> None:
        self._parked.pop(conn, None)
        conn.seq = -1
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0

    def _close(self, conn: Connection) -> None:
        self._unpark(conn)
        conn.sock.close()
        self._open -= 1
        if not self._parked:
            self._deadlines.clear()  # all stale: nothing to wake up for
        if not self._accepting:
            self._resume_accepting()

    def _close_all(self) -> None:
        for conn in list(self._parked):
            self._close(conn)
        self._deadlines.clear()
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
        self._listener.close()
        self._selector.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; closed: stopped
            self._waker.send(b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_end.recv(4096):
                pass

    # ---------------------------------------------------------------------------------- workers

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            conn, request = job
            conn.out = memoryview(self._answer(conn, request))
            conn.broken = not conn.send()  # most answers fit the socket buffer: no second hop
            self._answered.put(conn)
            self._wake()

    def _answer(self, conn: Connection, request: httpwire.Request) -> bytes:
        environ = httpwire.environ(
            request, server=self.server_address, client=conn.client, scheme=self._scheme
        )
        try:
            status, headers, body = httpwire.call(self._app, environ)
        except Exception:
            log.exception("http %s %r: the endpoint failed", conn.client[0], request.line)
            conn.keep_alive = False
            return httpwire.error("500 Internal Server Error")
        log.debug('http %s "%s" %s %d', conn.client[0], request.line, status.split(" ", 1)[0], len(body))
        conn.keep_alive = conn.keep_alive and not self._stopping.is_set()
        return httpwire.response(
            status, headers, body, head_only=request.method == "HEAD", keep_alive=conn.keep_alive
        )
