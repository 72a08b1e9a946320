"""Who is calling: the hospital's identity from its TLS certificate, checked against the CRL.

gRPC verifies the certificate chain and validity dates during the handshake, but Python's gRPC has
no revocation option, so every call's peer certificate is checked here against the CRL file, which is
re-read whenever it changes: revoking a hospital takes effect at its next call, without a restart.
No gRPC import: the servicer passes in the call's auth context (a mapping of property -> values).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509

from medfed.common.errors import PkiError
from medfed.common.pki import Revocations, load_crl, signed_by
from medfed.server.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("medfed.server")

AuthContext = Mapping[str, Sequence[bytes]]


class PeerAuthenticator:
    def __init__(self, ca: x509.Certificate, crl_path: Path | None) -> None:
        self._ca = ca
        self._crl_path = crl_path
        self._lock = threading.Lock()
        self._crl_stamp: tuple[int, int] | None = None
        self._revoked = Revocations(frozenset())
        self._serials: dict[bytes, int] = {}
        if crl_path is not None:
            load_crl(crl_path)  # fail at start-up, with the reason, if the file is missing or broken
            self._reload()

    def _reload(self) -> None:
        """Re-read the CRL when its file changed; a broken replacement keeps the last good list."""
        assert self._crl_path is not None
        try:
            stat = os.stat(self._crl_path)
        except OSError as exc:
            if self._crl_stamp is not None:  # say it once, not on every call
                log.error("cannot read the revocation list %s (%s); keeping the last one", self._crl_path, exc.strerror)
                self._crl_stamp = None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._crl_stamp:
            return
        crl = load_crl(self._crl_path)
        if not signed_by(crl, self._ca):
            raise PkiError(f"{self._crl_path} is not signed by the federation's CA")
        self._revoked, self._crl_stamp = Revocations.from_crl(crl), stamp
        log.info("revocation list %s: %d revoked certificate(s)", self._crl_path, len(self._revoked.serials))

    def identify(self, auth_context: AuthContext) -> str:
        """The caller's hospital name (its certificate's common name), unless it is revoked."""
        names = auth_context.get("x509_common_name") or []
        pems = auth_context.get("x509_pem_cert") or []
        if not names or not pems:
            raise Unauthenticated("no client certificate")
        name = names[0].decode(errors="replace")
        if self._crl_path is not None:
            with self._lock:
                try:
                    self._reload()
                except PkiError as exc:
                    log.error("%s; keeping the last revocation list", exc)
                serial = self._serial(pems[0])
            if serial in self._revoked.serials:
                raise PermissionDenied(f"the certificate of {name} (serial {serial:x}) has been revoked")
        return name

    def _serial(self, pem: bytes) -> int:
        serial = self._serials.get(pem)
        if serial is None:
            serial = x509.load_pem_x509_certificate(pem).serial_number
            if len(self._serials) > 10_000:
                self._serials.clear()
            self._serials[pem] = serial
        return serial
