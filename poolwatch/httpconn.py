"""One client connection of the endpoint's server: its socket, what it has sent, and non-blocking I/O."""

from __future__ import annotations

import logging
import selectors
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

log = logging.getLogger("poolwatch.httpserver")

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
READ_CHUNK = 65536

HANDSHAKE, HEAD, WORKING, WRITING, DRAINING = "handshake", "head", "working", "writing", "draining"
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Connection:
    """A client socket (non-blocking), owned by the selector thread or by one worker at a time.

    Each I/O step does what the socket allows now and says what to wait for next; a failure is
    logged as one DEBUG line (a client's problem, never a traceback) and reported as ``False``.
    """

    __slots__ = (
        "broken",
        "buffer",
        "client",
        "eof",
        "events",
        "idle",
        "keep_alive",
        "line_done",
        "out",
        "scanned",
        "seq",
        "served",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, client: tuple[str, int], state: str) -> None:
        self.sock = sock
        self.client = client
        self.state = state
        self.buffer = bytearray()
        self.scanned = 0  # bytes of buffer already searched (or, draining, thrown away)
        self.line_done = False  # the request line is complete and was found servable
        self.idle = False  # a keep-alive pause: nothing of the next request yet
        self.eof = False
        self.keep_alive = False
        self.out = memoryview(b"")
        self.events = 0  # what the selector watches it for; 0 while not registered
        self.seq = -1  # the deadline entry in force; older heap entries for it are stale
        self.served = 0  # responses sent on it
        self.broken = False  # a worker's send failed: the selector thread closes it

    def handshake(self) -> int | bool:
        """Advance the TLS handshake: the events to wait for, True once done, False if it failed."""
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            return READ
        except ssl.SSLWantWriteError:
            return WRITE
        except (OSError, ssl.SSLError) as exc:
            # Plain HTTP on the TLS port, a scanner, a client refusing our certificate: one line.
            log.debug("http %s: TLS handshake failed: %s", self.client[0], reason(exc))
            return False
        return True

    def receive(self, limit: int) -> int | bool:
        """Read what has arrived, up to a little past ``limit`` bytes buffered.

        True when done for now, the events to wait for when TLS needs to write first, False if the
        connection failed. A closed peer sets ``eof``.
        """
        sock = self.sock
        try:
            while True:
                chunk = sock.recv(READ_CHUNK)
                if not chunk:
                    self.eof = True
                    return True
                self.buffer += chunk
                # A TLS socket may hold decrypted bytes the selector cannot see: read them now.
                if len(self.buffer) > limit or not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    return True
        except ssl.SSLWantWriteError:
            return READ | WRITE
        except _WOULD_BLOCK:
            return True
        except (OSError, ssl.SSLError) as exc:
            log.debug("http %s: read failed: %s", self.client[0], reason(exc))
            return False

    def send(self) -> bool:
        """Send what the socket takes now of ``out``; False if the connection failed."""
        try:
            while self.out:
                sent = self.sock.send(self.out)
                self.out = self.out[sent:]
        except _WOULD_BLOCK:
            return True
        except (OSError, ssl.SSLError) as exc:
            log.debug("http %s: write failed: %s", self.client[0], reason(exc))
            return False
        return True

    def discard(self, budget: int) -> bool:
        """Read and drop what the client still sends; True once it closed, failed or sent ``budget``."""
        try:
            while chunk := self.sock.recv(READ_CHUNK):
                self.scanned += len(chunk)
                if self.scanned > budget:
                    return True
        except _WOULD_BLOCK:
            return False
        except OSError:
            return True
        return True


def reason(exc: BaseException) -> str:
    """A short reason for a log line: the TLS alert or errno text, not a traceback."""
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(text) if text else type(exc).__name__
