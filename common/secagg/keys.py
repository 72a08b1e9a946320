"""Each hospital's keys for one round, and what peers can check about them.

A hospital makes two X25519 key pairs per round: one to agree the keys that encrypt the shares it
sends each peer (``cipher``), one to agree the pairwise mask seeds (``mask``). It signs both public keys,
with the federation id, the round and its name, using its TLS certificate's private key; peers verify
the signature against that certificate and the certificate against the federation's CA. So a
coordinator that relays the keys cannot put its own in their place: it has no hospital's certificate
key, and its own certificate is a server's, which peers refuse.

Agreed secrets go through HKDF-SHA256 with a label naming their use, the federation, the round and
both hospitals, so one agreement never keys two things. Shares travel sealed with AES-GCM, the
sender, receiver and round bound as associated data.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID

from medfed.common.errors import SecureAggregationError
from medfed.common.pki import common_name, is_admin, signed_by

KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class PublicKeys:
    """What a hospital advertises for a round, relayed by the coordinator to its peers."""

    hospital: str
    cipher: bytes
    mask: bytes
    signature: bytes
    certificate: bytes
    """the hospital's TLS certificate (PEM), which the signature is checked against"""


class RoundKeys:
    """A hospital's private keys for one round (never leave it)."""

    def __init__(self) -> None:
        self.cipher = X25519PrivateKey.generate()
        self.mask = X25519PrivateKey.generate()

    def public(self, hospital: str, federation: str, round_number: int, signing_key: ec.EllipticCurvePrivateKey,
               certificate: bytes) -> PublicKeys:  # fmt: skip
        cipher, mask = _raw(self.cipher.public_key()), _raw(self.mask.public_key())
        message = _signed_part(federation, round_number, hospital, cipher, mask)
        return PublicKeys(hospital, cipher, mask, signing_key.sign(message, ec.ECDSA(hashes.SHA256())), certificate)


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _signed_part(federation: str, round_number: int, hospital: str, cipher: bytes, mask: bytes) -> bytes:
    """The exact bytes a hospital signs: every field length-prefixed, so no two messages read alike."""
    parts = (b"medfed/secagg/keys/v1", federation.encode(), str(round_number).encode(), hospital.encode(), cipher,
             mask)  # fmt: skip
    return b"".join(_field(p) for p in parts)


def verify(keys: PublicKeys, ca: x509.Certificate, federation: str, round_number: int,
           now: dt.datetime | None = None) -> None:  # fmt: skip
    """Refuse (SecureAggregationError) keys that are not this hospital's own for this round: a certificate
    the CA did not issue, that is not a hospital's, names someone else or has expired, or a signature
    that does not verify."""
    who = keys.hospital
    try:
        cert = x509.load_pem_x509_certificate(keys.certificate)
    except ValueError:
        raise SecureAggregationError(f"the certificate relayed for {who} cannot be read") from None
    if not signed_by(cert, ca):
        raise SecureAggregationError(f"the certificate relayed for {who} was not issued by the federation's CA")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or is_admin(cert):
        raise SecureAggregationError(f"the certificate relayed for {who} is not a hospital's")
    if common_name(cert) != who:
        raise SecureAggregationError(f"the certificate relayed for {who} is {common_name(cert)}'s")
    moment = now or dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise SecureAggregationError(f"the certificate relayed for {who} is not valid now")
    if len(keys.cipher) != KEY_BYTES or len(keys.mask) != KEY_BYTES:
        raise SecureAggregationError(f"the keys relayed for {who} are not X25519 public keys")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SecureAggregationError(f"the certificate relayed for {who} has no elliptic-curve key")
    try:
        public.verify(keys.signature, _signed_part(federation, round_number, who, keys.cipher, keys.mask),
                      ec.ECDSA(hashes.SHA256()))  # fmt: skip
    except InvalidSignature:
        raise SecureAggregationError(
            f"the keys relayed for {who} are not signed by {who}: refusing them (were they substituted?)"
        ) from None


def agree(private: X25519PrivateKey, peer: bytes, *, use: str, federation: str, round_number: int, a: str,
          b: str) -> bytes:  # fmt: skip
    """A 32-byte secret only ``a`` and ``b`` can compute, for ``use`` ("mask" or "cipher") in this round."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        raise SecureAggregationError("a peer's X25519 key is invalid") from None
    first, second = sorted((a, b))
    info = b"".join(_field(p) for p in (b"medfed/secagg/" + use.encode(), federation.encode(),
                                        str(round_number).encode(), first.encode(), second.encode()))  # fmt: skip
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + 16:
        raise SecureAggregationError("a sealed share is too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise SecureAggregationError(
            "a sealed share does not open: it was altered or is not for this hospital"
        ) from None


def _survivors_part(federation: str, round_number: int, survivors: Sequence[str], dropped: Sequence[str]) -> bytes:
    parts = (b"medfed/secagg/survivors/v1", federation.encode(), str(round_number).encode(),
             "\0".join(sorted(survivors)).encode(), "\0".join(sorted(dropped)).encode())  # fmt: skip
    return b"".join(_field(p) for p in parts)


def sign_survivors(signing_key: ec.EllipticCurvePrivateKey, federation: str, round_number: int,
                   survivors: Sequence[str], dropped: Sequence[str]) -> bytes:  # fmt: skip
    """A hospital's signature over the survivors and dropped the coordinator announced to it."""
    return signing_key.sign(_survivors_part(federation, round_number, survivors, dropped), ec.ECDSA(hashes.SHA256()))


def verify_survivors(certificate: bytes, signature: bytes, federation: str, round_number: int,
                     survivors: Sequence[str], dropped: Sequence[str]) -> bool:  # fmt: skip
    """Whether the hospital of ``certificate`` (already verified with its keys) signed these same sets."""
    public = x509.load_pem_x509_certificate(certificate).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, _survivors_part(federation, round_number, survivors, dropped),
                      ec.ECDSA(hashes.SHA256()))  # fmt: skip
    except InvalidSignature:
        return False
    return True
