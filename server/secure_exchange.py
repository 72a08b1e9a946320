"""One SecureAggregate call, decoded: which stage it belongs to, what it hands the round, and how the
next stage's input for this hospital is encoded. The servicer passes these to the coordinator, which
runs them under its lock; nothing here touches gRPC."""

from __future__ import annotations

from collections.abc import Callable

from medfed.common.errors import WireFormatError
from medfed.common.wire import secure
from medfed.common.wire.proto import pb
from medfed.server.errors import InvalidUpdate
from medfed.server.secure_aggregation import SecureRound

Send = Callable[[SecureRound, str], None]
Answer = Callable[[SecureRound, str], pb.SecAggReply]


def _nothing(_round: SecureRound, _name: str) -> None:
    return None


def secure_exchange(request: pb.SecAggRequest) -> tuple[int, Send, Answer]:
    kind = request.WhichOneof("stage")
    if kind == "keys":
        keys = secure.keys_from_proto(request.keys)

        def take_keys(round_: SecureRound, name: str) -> None:
            if keys.hospital != name:
                raise InvalidUpdate(f"{name} sent keys in the name of {keys.hospital}")
            round_.take_keys(keys)

        return 1, take_keys, lambda r, _n: pb.SecAggReply(keys=secure.relayed_to_proto(r.relayed_keys()))
    if kind == "shares":
        bundles = secure.bundles_from_proto(request.shares)
        return (2, lambda r, n: r.take_shares(n, bundles),
                lambda r, n: pb.SecAggReply(shares=secure.bundles_to_proto(r.bundles_for(n))))  # fmt: skip
    if kind == "await_unmask":
        return 3, _nothing, lambda r, _n: pb.SecAggReply(unmask=secure.unmask_to_proto(r.unmask_request()))
    if kind == "confirmation":
        signature = secure.signature_from_proto(request.confirmation)

        def confirmations(round_: SecureRound, _name: str) -> pb.SecAggReply:
            return pb.SecAggReply(confirmations=secure.confirmations_to_proto(round_.confirmations()))

        return 4, lambda r, n: r.take_confirmation(n, signature), confirmations
    if kind == "reveal":
        reveal_msg = request.reveal

        def take_reveal(round_: SecureRound, name: str) -> None:
            round_.take_reveal(secure.reveal_from_proto(reveal_msg, name))

        return 5, take_reveal, lambda _r, _n: pb.SecAggReply(done=pb.SecAggDone())
    raise WireFormatError("a SecureAggregate call without a stage")
