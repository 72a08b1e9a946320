"""Why can't this hospital talk to the coordinator? A direct look at the TLS handshake.

gRPC reports a refused certificate, an untrusted coordinator and a coordinator that is down all as
UNAVAILABLE, often with only "Socket closed", and with a dual-stack host name the detail it keeps is
whichever address failed last. Retrying would then hide a configuration error for minutes. So before
the first successful call, each failed attempt is followed by one probe: a TLS handshake with the
hospital's own certificate, made with Python's ssl module, then the HTTP/2 preface. The server's answer
is precise: an alert naming the reason, a certificate that fails verification, HTTP/2 bytes (all is
well: keep retrying), or no connection at all (down: keep retrying).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from medfed.common.config import parse_address

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
TLS_ALERT_RECORD = b"\x15\x03"

_SERVER_CERT = {
    "certificate has expired": "the coordinator's certificate has expired; it needs a new one (fed-certs server)",
    "mismatch": "host name mismatch: the coordinator's certificate is not issued for {host}; connect with a name "
    "it was issued for, or give that name with --server-name",
}
_ALERTS = {
    "CERTIFICATE_REQUIRED": "the coordinator requires a client certificate",
    "UNKNOWN_CA": "the coordinator does not trust this hospital's certificate (it was issued by another CA)",
    "CERTIFICATE_EXPIRED": "the coordinator refused this hospital's certificate: it has expired",
    "CERTIFICATE_REVOKED": "the coordinator refused this hospital's certificate: it has been revoked",
}


@dataclass(frozen=True)
class Probe:
    server: str
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None
    timeout: float = 5.0

    def diagnose(self) -> str | None:
        """A final reason if the coordinator refuses this hospital (or it us), None if it may just be down."""
        host, port = parse_address(self.server)
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError:
            return None  # not reachable at all: that is what retrying is for
        with sock:
            if self.cert is None:
                return self._plaintext(sock)
            return self._tls(sock, host)

    def _plaintext(self, sock: socket.socket) -> str | None:
        try:
            sock.sendall(HTTP2_PREFACE)
            answer = sock.recv(2)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # hung up on a valid HTTP/2 preface
        except OSError:
            return None
        # A plaintext gRPC server answers the preface with its SETTINGS; a TLS one sends an alert or hangs up.
        if not answer or answer.startswith(TLS_ALERT_RECORD):
            return (
                f"{self.server} closed the plaintext connection at once: the coordinator requires TLS; give this "
                "hospital --tls-cert, --tls-key and --tls-ca instead of --insecure"
            )
        return None

    def _tls(self, sock: socket.socket, host: str) -> str | None:
        assert self.cert and self.key and self.ca
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        context.set_alpn_protocols(["h2"])
        name = self.server_name or host
        try:
            with context.wrap_socket(sock, server_hostname=name) as tls:
                tls.sendall(HTTP2_PREFACE)
                answer = tls.recv(1)  # in TLS 1.3 the server judges our certificate only now
        except ssl.SSLCertVerificationError as exc:
            message = str(exc.verify_message or exc)
            for fragment, reason in _SERVER_CERT.items():
                if fragment in message:
                    return reason.format(host=name)
            return f"unknown CA: the coordinator's certificate was not issued by the CA in --tls-ca ({message})"
        except ssl.SSLError as exc:
            reason = str(exc.reason or exc)
            for fragment, text in _ALERTS.items():
                if fragment in reason:
                    return text
            if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
                return f"{self.server} does not speak TLS (is the coordinator running with --insecure?)"
            return f"the coordinator refused the TLS handshake ({reason})"
        except OSError:
            return None
        if not answer:
            return (
                "the coordinator closed the connection right after the TLS handshake: it refused this hospital's "
                "certificate (is it issued by the federation's CA and still valid?)"
            )
        return None
