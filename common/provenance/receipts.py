"""The coordinator's receipt for an accepted update, and what a hospital keeps of each update it sent.

A receipt is the coordinator's signed word that it accepted, for this round, the update with this digest
from this hospital, and at which point of the audit chain (``chain_head``: the hash of the chain's last
record when the round opened). A hospital keeps its receipts beside digests of what it received and
sent (never data), so it can later prove that it contributed, and what: ``fed-audit receipt`` checks a
receipt's signature against the federation's CA and, given the run folder, that the chain lists the
update and still holds the record the receipt names (a chain rewritten before that point does not).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509

from medfed.common.errors import ProvenanceError
from medfed.common.provenance.records import now_iso, optional, parse_time, required
from medfed.common.provenance.signing import (
    Signer,
    b64,
    certificate_problem,
    fingerprint,
    load_pem,
    pem,
    unb64,
    verifies,
)

RECEIPT_LABEL = b"medfed/receipt/v1"
RECEIPT_FORMAT = "medfed-receipt/1"
SENT_FORMAT = "medfed-sent-update/1"


@dataclass(frozen=True)
class Receipt:
    federation_id: str
    round: int
    hospital: str
    update: str
    """hex digest of the accepted update"""
    num_examples: int
    time: str
    chain_head: str | None
    coordinator: str
    """fingerprint of the certificate that signed it"""
    certificate: str
    """that certificate (PEM), so the receipt can be checked with the CA alone"""
    signature: str
    """base64"""

    def signed_parts(self) -> tuple[bytes, ...]:
        return (self.federation_id.encode(), str(self.round).encode(), self.hospital.encode(),
                bytes.fromhex(self.update), str(self.num_examples).encode(), self.time.encode(),
                (self.chain_head or "").encode(), self.coordinator.encode())  # fmt: skip

    def problem(self, ca: x509.Certificate) -> str | None:
        """Why this receipt does not prove anything (None: the coordinator's certificate, issued by ``ca``,
        signed it)."""
        certificate = load_pem(self.certificate)
        if certificate is None:
            return "its certificate cannot be read"
        if fingerprint(certificate) != self.coordinator:
            return "its certificate is not the one it names"
        at = parse_time(self.time)
        if at is None:
            return f"its time {self.time!r} is not an ISO 8601 time"
        if (bad := certificate_problem(certificate, ca, "coordinator", at=at)) is not None:
            return f"the certificate that signed it {bad}"
        signature = unb64(self.signature)
        try:
            parts = self.signed_parts()
        except ValueError:
            return "its update digest is not hexadecimal"
        if signature is None or not verifies(certificate, signature, RECEIPT_LABEL, *parts):
            return "the coordinator's signature does not verify (forged or altered)"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"format": RECEIPT_FORMAT, "federation_id": self.federation_id, "round": self.round,
                "hospital": self.hospital, "update": self.update, "num_examples": self.num_examples,
                "time": self.time, "chain_head": self.chain_head, "coordinator": self.coordinator,
                "certificate": self.certificate, "signature": self.signature}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Receipt:
        if data.get("format") != RECEIPT_FORMAT:
            raise ProvenanceError(f"format {data.get('format')!r} is not {RECEIPT_FORMAT!r}")
        return cls(
            federation_id=required(data, "federation_id", str), round=required(data, "round", int),
            hospital=required(data, "hospital", str), update=required(data, "update", str),
            num_examples=required(data, "num_examples", int), time=required(data, "time", str),
            chain_head=optional(data, "chain_head", str), coordinator=required(data, "coordinator", str),
            certificate=required(data, "certificate", str), signature=required(data, "signature", str),
        )  # fmt: skip


@dataclass(frozen=True)
class SentUpdate:
    """What a hospital keeps of one update it sent: digests, never data."""

    federation_id: str
    round: int
    hospital: str
    received: str
    """hex model digest of everything the round's task carried (what it trained from)"""
    update: str
    """hex digest of the update it sent"""
    num_examples: int
    signature: str
    """its own signature over ``update`` (base64)"""
    time: str
    receipt: Receipt | None
    """the coordinator's receipt (None: not accepted, or a coordinator that gave none)"""

    def to_json(self) -> dict[str, Any]:
        return {"format": SENT_FORMAT, "federation_id": self.federation_id, "round": self.round,
                "hospital": self.hospital, "received": self.received, "update": self.update,
                "num_examples": self.num_examples, "signature": self.signature, "time": self.time,
                "receipt": self.receipt.to_json() if self.receipt is not None else None}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SentUpdate:
        if data.get("format") != SENT_FORMAT:
            raise ProvenanceError(f"format {data.get('format')!r} is not {SENT_FORMAT!r}")
        receipt = optional(data, "receipt", dict)
        return cls(
            federation_id=required(data, "federation_id", str), round=required(data, "round", int),
            hospital=required(data, "hospital", str), received=required(data, "received", str),
            update=required(data, "update", str), num_examples=required(data, "num_examples", int),
            signature=required(data, "signature", str), time=required(data, "time", str),
            receipt=Receipt.from_json(receipt) if receipt is not None else None,
        )  # fmt: skip


def issue_receipt(signer: Signer, *, federation_id: str, round_number: int, hospital: str, update: bytes,
                  num_examples: int, chain_head: str | None) -> Receipt:  # fmt: skip
    """The coordinator's signed receipt for an update it accepted."""
    unsigned = Receipt(federation_id, round_number, hospital, update.hex(), num_examples, now_iso(), chain_head,
                       signer.fingerprint, pem(signer.certificate), "")  # fmt: skip
    return replace(unsigned, signature=b64(signer.sign(RECEIPT_LABEL, *unsigned.signed_parts())))
