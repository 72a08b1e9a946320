"""A TCP proxy for tests, standing in for a load balancer in front of the coordinator: while its backend
is down it accepts each connection and closes it at once (what HAProxy or a cloud load balancer does),
and once given a backend it relays bytes both ways."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._backend: int | None = None
        self.closed_connections = 0
        self.bytes_upstream = 0
        """bytes relayed from clients to the backend, all connections together"""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def forward_to(self, port: int) -> None:
        """From now on, relay new connections to 127.0.0.1:port."""
        self._backend = port

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            backend = self._backend
            if backend is None:
                self.closed_connections += 1
                client.close()  # accepted, then closed without a word: the backend is down
                continue
            upstream = socket.create_connection(("127.0.0.1", backend))
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                relay = threading.Thread(target=self._relay, args=(source, sink, up), daemon=True)
                relay.start()
                self._threads.append(relay)

    def _relay(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if upstream:
                    self.bytes_upstream += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
