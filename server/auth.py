"""Who is calling: the hospital's identity from its TLS certificate, checked against the CRL.

gRPC verifies the certificate chain and validity dates during the handshake, but Python's gRPC has
no revocation option, so every call's peer certificate is checked here against the CRL file, which is
re-read whenever it changes: revoking a hospital takes effect at its next call, without a restart.
``watch`` also re-reads it every second and tells ``on_revoked`` which hospitals it now revokes, so a
revoked hospital's session ends at once, not at its next call (which may be a long poll that started
before the revocation, or an upload after hours of training on a model it should not have had).
No gRPC import: the servicer passes in the call's auth context (a mapping of property -> values).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from medfed.common.errors import PkiError
from medfed.common.peer_text import quoted
from medfed.common.pki import Revocations, is_admin, load_crl, signed_by
from medfed.server.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("medfed.server")

AuthContext = Mapping[str, Sequence[bytes]]
CRL_POLL_S = 1.0
MAX_REMEMBERED = 10_000


def revocation_reason(name: str, serial: int) -> str:
    return f"the certificate of {quoted(name)} (serial {serial:x}) has been revoked"


class PeerAuthenticator:
    def __init__(
        self,
        ca: x509.Certificate,
        crl_path: Path | None,
        on_revoked: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        """``on_revoked`` gets {hospital name: reason} for hospitals whose latest certificate a newly
        read CRL revokes."""
        self._ca = ca
        self._crl_path = crl_path
        self.on_revoked = on_revoked
        self._lock = threading.Lock()
        self._crl_stamp: tuple[int, int] | None = None
        self._revoked = Revocations(frozenset())
        self._certs: dict[bytes, tuple[int, bool]] = {}
        self._latest: dict[str, int] = {}
        """hospital name -> serial of the certificate its latest call came with"""
        self._stop = threading.Event()
        if crl_path is not None:
            load_crl(crl_path)  # fail at start-up, with the reason, if the file is missing or broken
            self._reload()

    def _reload(self) -> dict[str, str]:
        """Caller holds the lock. Re-read the CRL when its file changed (a broken replacement keeps the
        last good list); returns the hospitals seen so far whose latest certificate it revokes."""
        assert self._crl_path is not None
        try:
            stat = os.stat(self._crl_path)
        except OSError as exc:
            if self._crl_stamp is not None:  # say it once, not on every call
                log.error("cannot read the revocation list %s (%s); keeping the last one", self._crl_path, exc.strerror)
                self._crl_stamp = None
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._crl_stamp:
            return {}
        crl = load_crl(self._crl_path)
        if not signed_by(crl, self._ca):
            raise PkiError(f"{self._crl_path} is not signed by the federation's CA")
        self._revoked, self._crl_stamp = Revocations.from_crl(crl), stamp
        log.info("revocation list %s: %d revoked certificate(s)", self._crl_path, len(self._revoked.serials))
        return {
            name: revocation_reason(name, serial)
            for name, serial in self._latest.items()
            if serial in self._revoked.serials
        }

    def refresh(self) -> None:
        """Re-read the CRL if it changed, and end the sessions it revokes."""
        if self._crl_path is None:
            return
        with self._lock:
            try:
                revoked = self._reload()
            except PkiError as exc:
                log.error("%s; keeping the last revocation list", exc)
                return
        if revoked and self.on_revoked is not None:
            self.on_revoked(revoked)

    def watch(self, interval: float = CRL_POLL_S) -> None:
        """Refresh every ``interval`` seconds in a daemon thread, until ``close``."""
        if self._crl_path is None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                self.refresh()

        threading.Thread(target=loop, name="crl-watch", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def identify(self, auth_context: AuthContext, *, admin: bool = False) -> str:
        """The caller's name (its certificate's common name), unless it is revoked or has the wrong role:
        a hospital's certificate for the federation's calls, an operator's (``admin``) for the Admin
        service, never one for the other."""
        names = auth_context.get("x509_common_name") or []
        pems = auth_context.get("x509_pem_cert") or []
        if not names or not pems:
            raise Unauthenticated("no client certificate")
        name = names[0].decode(errors="replace")
        with self._lock:
            serial, operator = self._facts(pems[0])
        if operator != admin:
            raise PermissionDenied(
                f"{quoted(name)} has an operator's certificate (fed-certs admin), which cannot take part as a hospital"
                if operator
                else f"{quoted(name)} has a hospital's certificate; fed-admin needs one made with fed-certs admin"
            )
        if self._crl_path is not None:
            self.refresh()
            with self._lock:
                revoked = serial in self._revoked.serials
                if not revoked and not admin:
                    if len(self._latest) > MAX_REMEMBERED:
                        self._latest.clear()
                    self._latest[name] = serial
            if revoked:
                raise PermissionDenied(revocation_reason(name, serial))
        return name

    def operator(self, der: bytes) -> str:
        """The operator a TLS peer certificate (DER, as the dashboard's HTTPS sees it) belongs to; raises
        PermissionDenied for a hospital's certificate or a revoked one, as for fed-admin."""
        cert = x509.load_der_x509_certificate(der)
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        pem = cert.public_bytes(serialization.Encoding.PEM)
        context = {"x509_common_name": [str(n).encode() for n in names[:1]], "x509_pem_cert": [pem]}
        return self.identify(context, admin=True)

    def _facts(self, pem: bytes) -> tuple[int, bool]:
        """Caller holds the lock: the certificate's serial and whether it is an operator's."""
        facts = self._certs.get(pem)
        if facts is None:
            cert = x509.load_pem_x509_certificate(pem)
            facts = (cert.serial_number, is_admin(cert))
            if len(self._certs) > MAX_REMEMBERED:
                self._certs.clear()
            self._certs[pem] = facts
        return facts


@functools.lru_cache(maxsize=1024)
def _parsed(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def peer_certificate(auth_context: AuthContext) -> x509.Certificate | None:
    """The certificate of the TLS connection a call came over (gRPC checked it in the handshake); None
    without one. An update's signature must verify with its key."""
    pems = auth_context.get("x509_pem_cert") or []
    try:
        return _parsed(bytes(pems[0])) if pems else None
    except ValueError:
        return None


def certificate_expiry(auth_context: AuthContext) -> datetime | None:
    """When the caller's certificate expires (UTC), for the dashboard; None without one."""
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0]).not_valid_after_utc
    except ValueError:
        return None
