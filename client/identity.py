"""A hospital's TLS files, read once for what it signs with them: its updates (the audit chain credits
each to the certificate that signed it) and, in a secure round, its round keys; and the CA it checks
the coordinator's receipts and its peers' keys against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medfed.common.pki import load_cert, load_key
from medfed.common.provenance.signing import Signer


@dataclass(frozen=True)
class Identity:
    ca: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey
    certificate: bytes
    """the hospital's own certificate (PEM)"""

    @classmethod
    def load(cls, cert: Path, key: Path, ca: Path) -> Identity:
        return cls(load_cert(ca), load_key(key), load_cert(cert).public_bytes(serialization.Encoding.PEM))

    @property
    def signer(self) -> Signer:
        return Signer(self.signing_key, x509.load_pem_x509_certificate(self.certificate))
