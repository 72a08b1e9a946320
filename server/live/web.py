"""The dashboard's web server: the page (page/), ``GET /api/status`` (the monitor's snapshot as JSON)
and ``GET /metrics`` (Prometheus), all from the coordinator itself: no build step, no CDN.

It only reads, and it is bounded: MAX_CONNECTIONS requests at once, each dropped after
REQUEST_TIMEOUT_S of silence. With a token, every request needs it: ``Authorization: Bearer TOKEN`` (Prometheus,
scripts), or ``?token=TOKEN`` on the first page a browser opens, which answers with an HttpOnly,
SameSite=Strict cookie that carries it for the page's own requests. A wrong or missing token gets 401
and an empty body. Without a token, a dashboard other machines reach (under TLS) asks for a client
certificate and serves only operators' (fed-certs admin), checked against the CRL like fed-admin's;
any other gets 403 and an empty body. Responses forbid framing, sniffing and caching, and the page's
Content-Security-Policy allows only its own scripts, so text a hospital sent can never run as code.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry

from medfed.common.config import parse_address
from medfed.server.errors import CoordinatorError
from medfed.server.live.metrics import CONTENT_TYPE, metrics_registry, render
from medfed.server.live.monitor import Monitor

log = logging.getLogger("medfed.server")

PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/dashboard.js": ("dashboard.js", "text/javascript"),
         "/dashboard.css": ("dashboard.css", "text/css")}  # fmt: skip
COOKIE = "medfed_dashboard"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'",
}


def _page(name: str) -> bytes:
    return resources.files("medfed.server.live").joinpath("page", name).read_bytes()


MAX_CONNECTIONS = 32
"""requests served at once; more are closed unanswered (a browser tab polls once a second)"""
REQUEST_TIMEOUT_S = 10.0
"""a connection that sends nothing for this long is dropped, so idle ones cannot hold the slots"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    monitor: Monitor
    token: str | None
    registry: CollectorRegistry
    pages: dict[str, tuple[bytes, str]]
    slots: threading.BoundedSemaphore
    operator: Callable[[bytes], str] | None

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that fails (a TLS handshake without a certificate, plain HTTP to HTTPS, a reset):
        one debug line, never a traceback on the console."""
        log.debug("dashboard: a connection from %s failed: %s", client_address[0], sys.exc_info()[1])

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "medfed"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:
        log.debug("dashboard: %s %s", self.address_string(), format % args)

    def _operator_refusal(self) -> str | None:
        """Without a token under TLS: why the peer's certificate is not an operator's, or None if it is."""
        check = self.server.operator
        if check is None:
            return None
        der = self.connection.getpeercert(binary_form=True) if isinstance(self.connection, ssl.SSLSocket) else None
        if der is None:
            return "no client certificate"
        try:
            check(der)
        except CoordinatorError as exc:
            return str(exc)
        return None

    def _authorised(self, query: dict[str, list[str]]) -> tuple[bool, dict[str, str]]:
        """Whether the request carries the token, and the headers that keep a browser signed in."""
        token = self.server.token
        if token is None:
            return True, {}
        given = self.headers.get("Authorization", "")
        cookies = SimpleCookie(self.headers.get("Cookie", ""))
        if given.startswith("Bearer "):
            offered = given[7:]
        elif "token" in query:
            offered = query["token"][0]
        else:
            offered = cookies[COOKIE].value if COOKIE in cookies else ""
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return False, {}
        if "token" in query:
            return True, {"Set-Cookie": f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"}
        return True, {}

    def _send(self, code: int, body: bytes, content_type: str | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if (why := self._operator_refusal()) is not None:
            log.debug("dashboard: %s refused: %s", self.address_string(), why)
            self._send(403, b"", None)
            return
        allowed, signed_in = self._authorised(parse_qs(url.query))
        if not allowed:
            self._send(401, b"", None, {"WWW-Authenticate": 'Bearer realm="medfed"'})
            return
        if url.path == "/api/status":
            body = json.dumps(self.server.monitor.snapshot().to_json(), allow_nan=False).encode()
            self._send(200, body, "application/json")
        elif url.path == "/metrics":
            self._send(200, render(self.server.registry), CONTENT_TYPE)
        elif url.path in self.server.pages:
            self._send(200, *self.server.pages[url.path], signed_in)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET

    def _refuse_method(self) -> None:
        self._send(405, b"", None, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method


class Dashboard:
    """The web server in a daemon thread; ``close`` stops it."""

    def __init__(
        self,
        monitor: Monitor,
        address: str,
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        operator: Callable[[bytes], str] | None = None,
    ) -> None:
        """``operator``: with ``tls`` asking for client certificates, checks each request's certificate
        (DER) and raises CoordinatorError unless it is a valid operator's (server/auth.py)."""
        host, port = parse_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        self._server: _Server = server_class((host, port), _Handler)
        self._server.monitor, self._server.token = monitor, token
        self._server.slots = threading.BoundedSemaphore(max_connections)
        self._server.operator = operator
        self.operators_only = operator is not None
        self._server.registry = metrics_registry(monitor)
        self._server.pages = {path: (_page(name), kind) for path, (name, kind) in PAGES.items()}
        if tls is not None:
            # The handshake happens in the request's own thread, so a client that never sends one blocks nothing.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.scheme = "https" if tls is not None else "http"
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which must have started
            self._server.shutdown()
        self._server.server_close()
