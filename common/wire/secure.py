"""Secure aggregation's values to and from their messages, as pairs (common/secagg/messages.py has the
values). What a peer sends is checked here before it becomes a value: names, sizes of keys, shares,
sealed bundles and signatures, and counts, so the stages' logic only ever sees well-formed input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from medfed.common.errors import WireFormatError
from medfed.common.limits import HOSPITAL_NAME, MAX_CERTIFICATE, MAX_MODEL_BYTES, MAX_SIGNATURE
from medfed.common.peer_text import quoted
from medfed.common.secagg import keys, shamir
from medfed.common.secagg.messages import Parameters, Reveal, ShareBundle, UnmaskRequest
from medfed.common.wire.proto import pb

MAX_HOSPITALS = 10_000
"""hospitals in one secure round"""
SEALED_BYTES = keys.NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16


def _name(value: str, what: str) -> str:
    if not HOSPITAL_NAME.match(value):
        raise WireFormatError(f"{what} {quoted(value)} is not a hospital name")
    return value


def _names(values: list[str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    if len(values) > MAX_HOSPITALS:
        raise WireFormatError(f"more than {MAX_HOSPITALS} {what}")
    names = tuple(_name(v, what) for v in values)
    if len(set(names)) != len(names):
        raise WireFormatError(f"a hospital is listed twice among the {what}")
    return names


def parameters_to_proto(value: Parameters) -> pb.SecureAggregation:
    return pb.SecureAggregation(
        participants=[pb.Participant(name=n, num_examples=c) for n, c in value.participants],
        threshold=value.threshold, graph_seed=value.graph_seed, clip=value.clip, length=value.length,
    )  # fmt: skip


def parameters_from_proto(msg: pb.SecureAggregation) -> Parameters:
    names = _names([p.name for p in msg.participants], "participants")
    if names != tuple(sorted(names)) or any(p.num_examples < 1 for p in msg.participants):
        raise WireFormatError("the secure round's participants must be sorted, with positive counts")
    if not (math.isfinite(msg.clip) and msg.clip > 0) or not 0 < msg.length <= MAX_MODEL_BYTES // 4:
        raise WireFormatError("invalid secure-aggregation range or length in the task")
    if not 16 <= len(msg.graph_seed) <= 64 or not 2 <= msg.threshold <= len(names):
        raise WireFormatError("invalid secure-aggregation graph seed or threshold in the task")
    counts = (p.num_examples for p in msg.participants)
    return Parameters(tuple(zip(names, counts, strict=True)), msg.threshold, msg.graph_seed, msg.clip, msg.length)


def keys_to_proto(value: keys.PublicKeys) -> pb.PublicKeys:
    return pb.PublicKeys(hospital=value.hospital, cipher=value.cipher, mask=value.mask, signature=value.signature,
                         certificate=value.certificate)  # fmt: skip


def keys_from_proto(msg: pb.PublicKeys) -> keys.PublicKeys:
    hospital = _name(msg.hospital, "the hospital of a key set")
    if len(msg.cipher) != keys.KEY_BYTES or len(msg.mask) != keys.KEY_BYTES:
        raise WireFormatError(f"{hospital}'s keys are not X25519 public keys")
    if not 0 < len(msg.signature) <= MAX_SIGNATURE or not 0 < len(msg.certificate) <= MAX_CERTIFICATE:
        raise WireFormatError(f"{hospital}'s key signature or certificate has an impossible size")
    return keys.PublicKeys(hospital, msg.cipher, msg.mask, msg.signature, msg.certificate)


def relayed_to_proto(values: list[keys.PublicKeys]) -> pb.RelayedKeys:
    return pb.RelayedKeys(keys=[keys_to_proto(v) for v in values])


def relayed_from_proto(msg: pb.RelayedKeys) -> list[keys.PublicKeys]:
    values = [keys_from_proto(k) for k in msg.keys]
    _names([v.hospital for v in values], "hospitals with keys")
    return values


def bundles_to_proto(values: list[ShareBundle]) -> pb.ShareBundles:
    return pb.ShareBundles(bundles=[pb.ShareBundle(sender=b.sender, recipient=b.recipient, sealed=b.sealed)
                                    for b in values])  # fmt: skip


def bundles_from_proto(msg: pb.ShareBundles) -> list[ShareBundle]:
    if len(msg.bundles) > MAX_HOSPITALS:
        raise WireFormatError(f"more than {MAX_HOSPITALS} share bundles")
    values = []
    for b in msg.bundles:
        if len(b.sealed) != SEALED_BYTES:
            raise WireFormatError(
                f"a share bundle from {quoted(b.sender)} has {len(b.sealed)} bytes, not {SEALED_BYTES}"
            )
        values.append(ShareBundle(_name(b.sender, "a bundle's sender"), _name(b.recipient, "a bundle's recipient"),
                                  b.sealed))  # fmt: skip
    return values


def unmask_to_proto(value: UnmaskRequest) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(survivors=list(value.survivors), dropped=list(value.dropped))


def unmask_from_proto(msg: pb.UnmaskRequest) -> UnmaskRequest:
    return UnmaskRequest(_names(list(msg.survivors), "survivors"), _names(list(msg.dropped), "dropped hospitals"))


def confirmations_to_proto(value: Mapping[str, bytes]) -> pb.Confirmations:
    return pb.Confirmations(signatures=dict(value))


def confirmations_from_proto(msg: pb.Confirmations) -> dict[str, bytes]:
    names = _names(list(msg.signatures), "confirming hospitals")
    return {n: signature_from_proto(msg.signatures[n]) for n in names}


def signature_from_proto(value: bytes) -> bytes:
    if not 0 < len(value) <= MAX_SIGNATURE:
        raise WireFormatError("a confirmation signature has an impossible size")
    return value


def reveal_to_proto(value: Reveal) -> pb.Reveal:
    return pb.Reveal(self_shares=dict(value.self_shares), key_shares=dict(value.key_shares))


def reveal_from_proto(msg: pb.Reveal, sender: str) -> Reveal:
    for kind in (msg.self_shares, msg.key_shares):
        _names(list(kind), "hospitals whose shares are revealed")
        if any(len(share) != shamir.SHARE_BYTES for share in kind.values()):
            raise WireFormatError(f"a share revealed by {sender} has the wrong size")
    return Reveal(sender, dict(msg.self_shares), dict(msg.key_shares))
