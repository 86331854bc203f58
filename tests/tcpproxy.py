"""A small TCP proxy owned by the fault tests: forwards to a real server, or misbehaves on purpose.

Modes: ``forward`` (a plain relay), ``blackhole`` (accepts connections, reads and discards, never
answers), ``slow`` (relays, but holds every server-to-client chunk for ``delay`` seconds).
``cut()`` closes every open connection at once (a connection cut mid-query); ``accepted`` counts
connections, which is how tests count a client's connection attempts.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from typing_extensions import Self

Mode = Literal["forward", "blackhole", "slow"]
_CHUNK = 65536


class TcpProxy:
    def __init__(
        self, upstream: tuple[str, int] | None = None, *, mode: Mode = "forward", delay: float = 0.0
    ) -> None:
        if mode != "blackhole" and upstream is None:
            raise ValueError(f"mode {mode} needs an upstream")
        self.upstream = upstream
        self.mode: Mode = mode
        self.delay = delay
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def cut(self) -> int:
        """Close every open connection (both sides); how many client connections were cut."""
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return len(sockets)

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()
        if self._thread.is_alive():
            self._thread.join(2)

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.update(sockets)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.mode == "blackhole":
            self._drain(client)
            return
        assert self.upstream is not None
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self._track(server)
        self._relay(client, server)

    def _drain(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                readable, _, _ = select.select([client], [], [], 0.2)
                if readable and not client.recv(_CHUNK):
                    break
        client.close()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            while not self._closed.is_set():
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(_CHUNK)
                    if not data:
                        raise OSError("closed")
                    if sock is server:
                        if self.mode == "slow":
                            time.sleep(self.delay)
                        client.sendall(data)
                    else:
                        server.sendall(data)
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.close()
