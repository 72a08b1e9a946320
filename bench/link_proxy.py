"""An emulated WAN link for benchmarks: a TCP proxy that delays every byte by a set time in each direction
and, optionally, caps each connection's rate in each direction (every hospital has its own connection,
so a per-connection cap is a per-hospital link).

This kernel has no netem qdisc (`tc qdisc add dev lo root netem ...` fails), so the link is emulated in
user space: for each connection, in each direction, one thread reads what the sender wrote and stamps
it with the time it would reach the far end, and another writes it out at that time. With a rate cap the
bytes are serialised onto the link one after the other at that rate before the delay starts, as on a
real link of that speed. Everything on the connection is delayed alike, HTTP/2's window updates and
pings included, so flow control sees the round trip a real link has.

What it does not emulate: loss, jitter, and the sender's TCP window over the long path (the proxy's
buffer, ``--buffer-mb`` per direction, stands in for it; a real Linux TCP stack autotunes its buffers up
to 6 MB by default, enough for 100 Mbit/s at 480 ms or 1 Gbit/s at 48 ms).

    python bench/link_proxy.py --upstream 127.0.0.1:50051 --rtt-ms 50 --rate-mbit 100 --port-file p

prints nothing; it writes the port it listens on to ``--port-file`` and runs until killed. Other
benchmarks start it with ``start_link`` and stop it, with every connection's process, with ``stop_link``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

READ_BYTES = 64 << 10
"""what one read takes off a socket: small enough that a capped link paces smoothly (5 ms at 100 Mbit/s)"""


class Direction:
    """One direction of one connection: bytes read from ``source`` reach ``sink`` ``delay`` seconds after
    the link finished carrying them at ``rate`` bytes per second (None: as fast as they come)."""

    def __init__(self, source: socket.socket, sink: socket.socket, delay: float, rate: float | None,
                 buffer_bytes: int, done: threading.Barrier) -> None:  # fmt: skip
        self.source, self.sink, self.delay, self.rate, self.done = source, sink, delay, rate, done
        self.buffer_bytes = buffer_bytes
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.closed = False
        self.link_free_at = 0.0
        """when the emulated link has carried everything read so far (with a rate cap)"""

    def read(self) -> None:
        try:
            while True:
                with self.cond:
                    while self.queued >= self.buffer_bytes and not self.closed:
                        self.cond.wait()  # the far end is behind: hold the sender back, as TCP would
                    if self.closed:
                        break  # the far end went away
                data = self.source.recv(READ_BYTES)
                if not data:
                    break
                now = time.monotonic()
                if self.rate is not None:
                    self.link_free_at = max(self.link_free_at, now) + len(data) / self.rate
                    arrives = self.link_free_at + self.delay
                else:
                    arrives = now + self.delay
                with self.cond:
                    self.queue.append((arrives, data))
                    self.queued += len(data)
                    self.cond.notify_all()
        except OSError:
            pass  # the connection was reset: the reading is over either way
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if not self.queue:
                        break
                    arrives, data = self.queue[0]
                wait = arrives - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.sink.sendall(data)
                with self.cond:
                    self.queue.popleft()
                    self.queued -= len(data)
                    self.cond.notify_all()
            self.sink.shutdown(socket.SHUT_WR)  # the sender closed: pass the close on, after its last bytes
        except OSError:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            if self.done.wait() == 0:  # both directions are over: the last one closes the sockets
                self.source.close()
                self.sink.close()


def carry(client: socket.socket, upstream: tuple[str, int], delay: float, rate: float | None,
          buffer_bytes: int) -> None:  # fmt: skip
    """One connection, both directions, until both are over."""
    try:
        server = socket.create_connection(upstream)
    except OSError:
        client.close()
        return
    for each in (client, server):
        each.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = threading.Barrier(2)
    threads = []
    for source, sink in ((client, server), (server, client)):
        direction = Direction(source, sink, delay, rate, buffer_bytes, done)
        threads += [threading.Thread(target=direction.read), threading.Thread(target=direction.write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def serve(listener: socket.socket, upstream: tuple[str, int], delay: float, rate: float | None,
          buffer_bytes: int) -> None:  # fmt: skip
    """Each connection in a process of its own (forked), so that ten hospitals' links do not share one
    interpreter lock: on loopback the link must be faster than what it carries."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they end
    while True:
        client, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            carry(client, upstream, delay, rate, buffer_bytes)
            os._exit(0)
        client.close()


def start_link(upstream_port: int, rtt_ms: float, rate_mbit: float | None, port_file: Path,
               buffer_mb: float = 32.0) -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
    """Start a proxy process in front of 127.0.0.1:``upstream_port``; returns it and the port it listens on."""
    port_file.unlink(missing_ok=True)
    args = [sys.executable, __file__, "--upstream", f"127.0.0.1:{upstream_port}", "--rtt-ms", str(rtt_ms),
            "--port-file", str(port_file), "--buffer-mb", str(buffer_mb)]  # fmt: skip
    if rate_mbit is not None:
        args += ["--rate-mbit", str(rate_mbit)]
    proxy = subprocess.Popen(args, start_new_session=True)  # its connections' processes share its group
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if proxy.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the link proxy did not start (exit status {proxy.poll()})")
        time.sleep(0.05)
    return proxy, int(port_file.read_text())


def stop_link(proxy: subprocess.Popen[bytes]) -> None:
    """Stop the proxy and every connection it carries."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proxy.pid, signal.SIGKILL)
    proxy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (default a free port)")
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="round-trip time added (half each way)")
    parser.add_argument("--rate-mbit", type=float, help="each connection's rate in each direction (default no cap)")
    parser.add_argument("--buffer-mb", type=float, default=32.0, help="bytes held per direction (default 32 MB)")
    parser.add_argument("--port-file", type=Path, help="where to write the port listened on")
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    listen_host, listen_port = args.listen.rsplit(":", 1)
    listener = socket.create_server((listen_host, int(listen_port)), backlog=256)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(listener.getsockname()[1]))
        tmp.replace(args.port_file)
    rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit else None
    serve(listener, (host, int(port)), args.rtt_ms / 2000, rate, int(args.buffer_mb * 1e6))


if __name__ == "__main__":
    main()
