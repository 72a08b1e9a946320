"""Why can't this hospital talk to the coordinator? A direct look at the TLS handshake.

gRPC reports a refused certificate, an untrusted coordinator and a coordinator that is down all as
UNAVAILABLE, often with only "Socket closed", and with a dual-stack host name the detail it keeps is
whichever address failed last. Retrying would then hide a configuration error for minutes. So before
the first successful call, each failed attempt is followed by one probe: a TLS handshake with the
hospital's own certificate, made with Python's ssl module, then the HTTP/2 preface. The server's answer
is precise: an alert naming the reason, a certificate that fails verification, HTTP/2 bytes (all is
well: keep retrying), or no connection at all (down: keep retrying).

Only a definite refusal ends the node. A connection that is accepted and then closed without a word
is what a TCP proxy or load balancer does while the coordinator behind it is down or restarting, so
it is an outage and is retried (a redeploy behind a load balancer must not stop every hospital). It
is told apart from a TLS coordinator hanging up on a plaintext hospital (which also closes without a
word) by a second look: a TLS ClientHello, which a TLS coordinator answers and a proxy with nothing
behind it does not.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from medfed.common.config import parse_address

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
TLS_ALERT_RECORD = b"\x15\x03"

_CLOSED = (
    "{server} accepted the connection and closed it {when}: a proxy or load balancer in front of a coordinator "
    "that is down or restarting?"
)
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
class Diagnosis:
    """What the probe saw. ``final``: a refusal that retrying cannot fix (the node ends with ``text``);
    otherwise an observation for the retry's log line."""

    text: str
    final: bool


def _refused(text: str) -> Diagnosis:
    return Diagnosis(text, final=True)


def _outage(text: str) -> Diagnosis:
    return Diagnosis(text, final=False)


@dataclass(frozen=True)
class Probe:
    server: str
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None
    timeout: float = 5.0

    def diagnose(self) -> Diagnosis | None:
        """A final refusal, an outage worth naming in the retry's log line, or None when nothing is wrong
        that the probe can see (or nothing answers at all: that is what retrying is for)."""
        host, port = parse_address(self.server)
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError:
            return None
        with sock:
            if self.cert is None:
                return self._plaintext(sock, host, port)
            return self._tls(sock, host)

    def _plaintext(self, sock: socket.socket, host: str, port: int) -> Diagnosis | None:
        try:
            sock.sendall(HTTP2_PREFACE)
            answer = sock.recv(2)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # hung up on a valid HTTP/2 preface
        except OSError:
            return None
        if answer.startswith(TLS_ALERT_RECORD) or (not answer and self._speaks_tls(host, port)):
            return _refused(
                f"{self.server} closed the plaintext connection at once: the coordinator requires TLS; give this "
                "hospital --tls-cert, --tls-key and --tls-ca instead of --insecure"
            )
        if not answer:
            return _outage(_CLOSED.format(server=self.server, when="before any HTTP/2 reply"))
        return None

    def _speaks_tls(self, host: str, port: int) -> bool:
        """Whether something at host:port answers a TLS ClientHello (nothing is verified: only whether
        it speaks TLS at all)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((host, port), timeout=self.timeout) as sock,
                context.wrap_socket(sock, server_hostname=self.server_name or host),
            ):
                return True
        except ssl.SSLError as exc:
            return "EOF" not in str(exc.reason or exc)  # an alert or a bad record: a TLS peer
        except OSError:
            return False

    def _tls(self, sock: socket.socket, host: str) -> Diagnosis | None:
        assert self.cert and self.key and self.ca
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        context.set_alpn_protocols(["h2"])
        name = self.server_name or host
        try:
            tls = context.wrap_socket(sock, server_hostname=name)
        except ssl.SSLCertVerificationError as exc:
            message = str(exc.verify_message or exc)
            for fragment, reason in _SERVER_CERT.items():
                if fragment in message:
                    return _refused(reason.format(host=name))
            return _refused(
                f"unknown CA: the coordinator's certificate was not issued by the CA in --tls-ca ({message})"
            )
        except ssl.SSLError as exc:
            if isinstance(exc, ssl.SSLEOFError) or "EOF" in str(exc.reason or exc):
                return _outage(_CLOSED.format(server=self.server, when="during the TLS handshake"))
            return self._alert(exc) or _refused(f"the coordinator refused the TLS handshake ({exc.reason or exc})")
        except (ConnectionResetError, BrokenPipeError):
            return _outage(_CLOSED.format(server=self.server, when="during the TLS handshake"))
        except OSError:
            return None
        with tls:  # the handshake is done: whoever answered holds the coordinator's certificate
            try:
                tls.sendall(HTTP2_PREFACE)
                answer = tls.recv(1)  # in TLS 1.3 the server judges our certificate only now
            except ssl.SSLError as exc:
                answer = b""  # a close without close_notify reads as an EOF error
                if (alert := self._alert(exc)) is not None:
                    return alert
            except OSError:
                return None
        if not answer:
            return _refused(
                "the coordinator closed the connection right after the TLS handshake: it refused this hospital's "
                "certificate (is it issued by the federation's CA and still valid?)"
            )
        return None

    def _alert(self, exc: ssl.SSLError) -> Diagnosis | None:
        """The refusal an alert (or a plaintext reply to TLS) names, if it names one."""
        reason = str(exc.reason or exc)
        for fragment, text in _ALERTS.items():
            if fragment in reason:
                return _refused(text)
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
            return _refused(f"{self.server} does not speak TLS (is the coordinator running with --insecure?)")
        return None
