"""The federation's small PKI: one CA, the coordinator's certificate, one certificate per hospital, a CRL.

Keys are ECDSA P-256 (fast handshakes, supported by every TLS stack gRPC uses). The CA is valid for
five years, leaf certificates for 397 days (the longest lifetime public CAs may issue today). A
hospital's certificate carries its name as common name: that name, not anything the hospital
claims, is its identity. Private keys are created with mode 0600 and never overwritten unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfed.common import files
from medfed.common.errors import PkiError

CA_DAYS = 5 * 365
LEAF_DAYS = 397
CRL_DAYS = 365
CA_FILE, CA_KEY_FILE, CRL_FILE = "ca.crt", "ca.key", "crl.pem"
SERVER_NAME = "server"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


ADMIN_ROLE = "medfed admin"
"""the organizational unit that makes a certificate an operator's (fed-certs admin): it may use the
coordinator's Admin service and cannot take part as a hospital"""


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(attributes)


def is_admin(cert: x509.Certificate) -> bool:
    """An operator's certificate (fed-certs admin), whose role the CA's signature vouches for."""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return any(unit.value == ADMIN_ROLE for unit in units)


def make_ca(
    common_name: str = "medfed federation CA", days: int = CA_DAYS, now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key, start = new_key(), now or _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server_hosts: list[str] | None = None,
    days: int = LEAF_DAYS,
    now: dt.datetime | None = None,
    admin: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate when ``server_hosts`` is given (its subject alternative names), else a client
    one: a hospital's, or with ``admin`` an operator's."""
    key, start = new_key(), now or _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, ADMIN_ROLE if admin else None))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server_hosts is not None:
        builder = builder.add_extension(_san(server_hosts), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: dict[int, dt.datetime],
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    start = now or _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start)
        .next_update(start + dt.timedelta(days=CRL_DAYS))
    )
    for serial, when in sorted(revoked.items()):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256())


# ----- files ----------------------------------------------------------------------------------


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool = False) -> None:
    """Created with mode 0600 from the start (never world-readable, not even for an instant)."""
    if path.exists() and not force:
        raise PkiError(f"{path} already exists; pass --force to replace it (anything signed with it stops working)")
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files.write_bytes(path, data, mode=0o600)


def write_public(path: Path, item: x509.Certificate | x509.CertificateRevocationList) -> None:
    files.write_bytes(path, item.public_bytes(serialization.Encoding.PEM))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_cert(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PkiError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} holds a {type(key).__name__}; medfed keys are ECDSA")
    return key


def load_crl(path: Path) -> x509.CertificateRevocationList:
    data = _read(path, "revocation list")
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate revocation list") from None


# ----- checks ----------------------------------------------------------------------------------


def common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def signed_by(cert: x509.Certificate | x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    public = ca.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    if isinstance(cert, x509.CertificateRevocationList):
        return cert.is_signature_valid(public)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_pair(
    cert_path: Path, key_path: Path, ca_path: Path, *, server: bool, now: dt.datetime | None = None
) -> x509.Certificate:
    """Everything that can be checked locally before a handshake, with a reason a person can act on."""
    cert, key, ca = load_cert(cert_path), load_key(key_path), load_cert(ca_path)
    moment = now or _now()
    if cert.public_key() != key.public_key():
        raise PkiError(f"{key_path} is not the private key of {cert_path}")
    if not signed_by(cert, ca):
        raise PkiError(f"{cert_path} was not issued by the CA in {ca_path}")
    if moment > cert.not_valid_after_utc:
        raise PkiError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; issue a new one with fed-certs")
    if moment < cert.not_valid_before_utc:
        raise PkiError(f"{cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    wanted = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([wanted])
    if wanted not in usages:
        role = "server" if server else "hospital (client)"
        raise PkiError(f"{cert_path} is not a {role} certificate (make one with fed-certs)")
    return cert


@dataclass(frozen=True)
class Revocations:
    serials: frozenset[int]

    @staticmethod
    def from_crl(crl: x509.CertificateRevocationList) -> Revocations:
        return Revocations(frozenset(entry.serial_number for entry in crl))
