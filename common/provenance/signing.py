"""Signatures for provenance, made with the key of a TLS certificate the federation's CA issued.

A hospital signs its updates with the key its TLS connection already proves it holds, the coordinator
its chain records and receipts with its server key; nobody needs a second key pair. Every signed
message starts with a label naming what it is (``framed``), so a signature made for one purpose (an
update, a chain record, a receipt, secure aggregation's round keys) is never valid for another.

A certificate vouches for a signature only if the CA issued it, it has the role the signer claims (a
hospital's client certificate, not an operator's; the coordinator's server certificate), it names the
signer, and it was valid when the signature was made.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from medfed.common.peer_text import quoted
from medfed.common.pki import common_name, is_admin, signed_by
from medfed.common.provenance.digests import framed

Role = Literal["hospital", "coordinator"]
UPDATE_LABEL = b"medfed/update-signature/v1"
"""what a hospital signs: this label and its update's digest"""
SIGNATURE = ec.ECDSA(hashes.SHA256())


def fingerprint(certificate: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER bytes: how records name a certificate."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def load_pem(text: str | bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(text.encode() if isinstance(text, str) else text)
    except ValueError:
        return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class Signer:
    """A TLS certificate and its private key, used to sign provenance messages."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def sign(self, label: bytes, *parts: bytes) -> bytes:
        return self.key.sign(framed(label, *parts), SIGNATURE)


def verifies(certificate: x509.Certificate, signature: bytes, label: bytes, *parts: bytes) -> bool:
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, framed(label, *parts), SIGNATURE)
    except InvalidSignature:
        return False
    return True


def certificate_problem(
    certificate: x509.Certificate, ca: x509.Certificate, role: Role, *, name: str | None = None,
    at: dt.datetime | None = None,
) -> str | None:  # fmt: skip
    """Why ``certificate`` cannot vouch for ``role`` (and ``name``) at time ``at``, or None if it can."""
    if not signed_by(certificate, ca):
        return "was not issued by the federation's CA"
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    wanted = ExtendedKeyUsageOID.CLIENT_AUTH if role == "hospital" else ExtendedKeyUsageOID.SERVER_AUTH
    if wanted not in usages or (role == "hospital" and is_admin(certificate)):
        return f"is not a {role}'s certificate"
    if name is not None and common_name(certificate) != name:
        return f"names {quoted(common_name(certificate))}, not {quoted(name)}"
    if at is not None and not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
        return f"was not valid at {at.isoformat(timespec='seconds')}"
    return None


def sign_update(signer: Signer, digest: bytes) -> bytes:
    return signer.sign(UPDATE_LABEL, digest)


def update_signed(certificate: x509.Certificate, signature: bytes, digest: bytes) -> bool:
    """``signature`` is the key of ``certificate``'s over this update digest."""
    return verifies(certificate, signature, UPDATE_LABEL, digest)
