"""Provenance's values to and from their messages, as pairs: the coordinator's receipt for an accepted
update (common/provenance/receipts.py). What the coordinator sends is checked here for form (sizes,
names, hexadecimal digests) before it becomes a value; whether it proves anything is the receipt's own
check against the CA (``Receipt.problem``)."""

from __future__ import annotations

import re

from medfed.common.errors import WireFormatError
from medfed.common.limits import HOSPITAL_NAME, MAX_CERTIFICATE, MAX_SIGNATURE, MAX_TEXT
from medfed.common.peer_text import quoted
from medfed.common.provenance.digests import DIGEST_BYTES
from medfed.common.provenance.receipts import Receipt
from medfed.common.provenance.signing import b64, unb64
from medfed.common.wire.proto import pb

HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_TIME = 64


def receipt_to_proto(receipt: Receipt) -> pb.Receipt:
    return pb.Receipt(
        federation_id=receipt.federation_id, round=receipt.round, hospital=receipt.hospital,
        update_digest=bytes.fromhex(receipt.update), num_examples=receipt.num_examples, time=receipt.time,
        chain_head=receipt.chain_head or "", coordinator=receipt.coordinator, certificate=receipt.certificate,
        signature=unb64(receipt.signature) or b"",
    )  # fmt: skip


def receipt_from_proto(msg: pb.Receipt) -> Receipt:
    if not HOSPITAL_NAME.match(msg.hospital):
        raise WireFormatError(f"the receipt's hospital {quoted(msg.hospital)} is not a hospital name")
    if not 0 < len(msg.federation_id) <= MAX_TEXT or len(msg.time) > MAX_TIME:
        raise WireFormatError("the receipt's federation id or time is empty or too long")
    if len(msg.update_digest) != DIGEST_BYTES:
        raise WireFormatError(f"the receipt's update digest is {len(msg.update_digest)} bytes, not {DIGEST_BYTES}")
    if not HEX_DIGEST.match(msg.coordinator) or (msg.chain_head and not HEX_DIGEST.match(msg.chain_head)):
        raise WireFormatError("the receipt's certificate fingerprint or chain head is not a hex SHA-256")
    if not 0 < len(msg.signature) <= MAX_SIGNATURE or not 0 < len(msg.certificate) <= MAX_CERTIFICATE:
        raise WireFormatError("the receipt's signature or certificate is missing or too large")
    return Receipt(
        federation_id=msg.federation_id, round=msg.round, hospital=msg.hospital, update=msg.update_digest.hex(),
        num_examples=msg.num_examples, time=msg.time, chain_head=msg.chain_head or None,
        coordinator=msg.coordinator, certificate=msg.certificate, signature=b64(msg.signature),
    )  # fmt: skip
