"""The hospital's connection to the coordinator over gRPC: the only client module that calls stubs.

It retries transport failures with exponential backoff and jitter for at most ``max_wait`` seconds of
continuous failure, tells a refusal from an outage (gRPC reports both as UNAVAILABLE: the status
message, then a direct look at the TLS handshake, client/probe.py, decide), and maps every status code
to one of client/protocol.py's outcomes, so the hospital's loop (client/node.py) never sees gRPC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from medfed.client.probe import Diagnosis
from medfed.client.protocol import (
    CoordinatorAway,
    JoinInfo,
    NodeError,
    RoundAbandoned,
    Session,
    SessionLost,
    SubmitOutcome,
    Submitted,
)
from medfed.common.errors import WireFormatError
from medfed.common.messages import FinishedNotice, ReceivedTask, UpdateHeader
from medfed.common.peer_text import STATUS_LIMIT, cleaned
from medfed.common.retry import Backoff
from medfed.common.secagg.keys import PublicKeys
from medfed.common.secagg.messages import Reveal, ShareBundle, UnmaskRequest
from medfed.common.tensors import EncodedModel
from medfed.common.wire import secure
from medfed.common.wire.convert import info_to_proto
from medfed.common.wire.proto import pb, pb_grpc
from medfed.common.wire.provenance import receipt_from_proto
from medfed.common.wire.stream import read_task, update_chunk_messages, update_header_message

log = logging.getLogger("medfed.client")

T = TypeVar("T")
JOIN_DEADLINE_S = 30.0
TRANSFER_DEADLINE_S = 900.0
# Transport trouble, or a coordinator going down mid-call (CANCELLED): worth retrying until max_wait.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}
_SUBMITTED = {
    grpc.StatusCode.ALREADY_EXISTS: Submitted.ALREADY_HAD,
    grpc.StatusCode.FAILED_PRECONDITION: Submitted.DISCARDED,
    grpc.StatusCode.PERMISSION_DENIED: Submitted.DISCARDED,
}
"""what an upload's refusal means for the hospital; INVALID_ARGUMENT and RESOURCE_EXHAUSTED are final"""


def tls_failure(details: str, server: str, server_name: str | None = None) -> str | None:
    """A final reason when a transport error is really an authentication failure, else None.

    gRPC reports these as UNAVAILABLE, like a coordinator that is down; retrying them would only hide
    a configuration error, so they end the node at once with what to fix. ``server_name``: the name
    checked against the coordinator's certificate when it is not --server's host (--server-name)."""
    host = server.rsplit(":", 1)[0]
    if "Hostname Verification" in details or "Peer name" in details:
        if server_name:
            return (
                f"host name mismatch: the coordinator's certificate is not issued for {server_name} (--server-name); "
                "give a name it was issued for (fed-certs server --host lists them when it is made)"
            )
        return (
            f"host name mismatch: the coordinator's certificate is not issued for {host}; connect with a name "
            "it was issued for, or give that name with --server-name"
        )
    if "certificate has expired" in details:
        return "the coordinator's certificate has expired; it needs a new one (fed-certs server)"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return "unknown CA: the coordinator's certificate was not issued by the CA in --tls-ca"
    if "WRONG_VERSION_NUMBER" in details or "Tls handshake failed" in details:
        return (
            f"TLS handshake with {server} failed ({details.rsplit(': ', 1)[-1]}); is the coordinator running with TLS?"
        )
    return None


def _details(exc: grpc.RpcError) -> str:
    """The status message, as the coordinator (or gRPC) wrote it, cut and escaped for a log line."""
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return cleaned(details or str(exc.code() if isinstance(exc, grpc.Call) else exc), STATUS_LIMIT)


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


class GrpcConnection:
    def __init__(
        self,
        stub: pb_grpc.FederationStub,
        *,
        server: str,
        max_wait: float,
        tls: bool = False,
        server_name: str | None = None,
        diagnose: Callable[[], Diagnosis | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub, self._server, self._max_wait = stub, server, max_wait
        self._tls, self._server_name, self._diagnose = tls, server_name, diagnose
        self._sleep, self._clock = sleep, clock
        self._connected = False
        """a call has succeeded: from then on a failure is an outage, never a refusal worth probing"""

    def join(self, hospital: JoinInfo, *, retry: bool = True) -> Session:
        request = pb.JoinRequest(
            name=hospital.name,
            num_examples=hospital.num_examples,
            data=info_to_proto(hospital.data),
            client_version=hospital.version,
            classes=list(hospital.classes),
        )

        def call() -> pb.JoinReply:
            return self._stub.Join(request, timeout=JOIN_DEADLINE_S)

        try:
            reply = self._retrying("join", call) if retry else call()
        except grpc.RpcError as exc:
            # Without retries: down (UNAVAILABLE), or still the stopping coordinator ("the federation is over").
            if not retry and _code(exc) in (*RETRYABLE, grpc.StatusCode.FAILED_PRECONDITION):
                raise CoordinatorAway(_details(exc)) from None
            raise NodeError(f"the coordinator refused {hospital.name}: {_details(exc)}") from None
        self._connected = True
        return Session(reply.session_id, reply.federation_id)

    def next_task(self, session: Session) -> ReceivedTask | FinishedNotice | None:
        request = pb.TaskRequest(session_id=session.id)
        try:
            return self._retrying(
                "waiting for a task", lambda: read_task(self._stub.GetTask(request, timeout=TRANSFER_DEADLINE_S))
            )
        except WireFormatError as exc:
            raise NodeError(f"the coordinator sent an invalid task: {exc}") from None
        except grpc.RpcError as exc:
            raise self._session_error(exc) from None

    def submit(self, header: UpdateHeader, model: EncodedModel) -> SubmitOutcome:
        try:
            reply = self._retrying("sending the update", lambda: self._upload(header, model))
        except grpc.RpcError as exc:
            code = _code(exc)
            if code in _SUBMITTED:
                return SubmitOutcome(_SUBMITTED[code], _details(exc))
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise NodeError(f"the coordinator refused this hospital's update: {_details(exc)}") from None
            raise self._session_error(exc) from None
        if not reply.HasField("receipt"):
            return SubmitOutcome(Submitted.ACCEPTED)
        try:
            return SubmitOutcome(Submitted.ACCEPTED, receipt=receipt_from_proto(reply.receipt))
        except WireFormatError as exc:
            log.warning("the coordinator's receipt is malformed (%s); the update was accepted", exc)
            return SubmitOutcome(Submitted.ACCEPTED)

    def _upload(self, header: UpdateHeader, model: EncodedModel) -> pb.SubmitReply:
        """One Upload call: the header, then, only once the coordinator has admitted the upload (a receive
        slot is its), the bytes; so while it waits nothing but the header is on its way."""
        admitted, over = threading.Event(), threading.Event()

        def messages() -> Iterator[pb.UpdateMessage]:  # gRPC reads these in a thread of its own
            yield update_header_message(header, model.layout)
            admitted.wait()
            if not over.is_set():
                yield from update_chunk_messages(model)

        try:
            for reply in self._stub.Upload(messages(), timeout=TRANSFER_DEADLINE_S):
                kind = reply.WhichOneof("kind")
                if kind == "admitted":
                    admitted.set()
                elif kind == "done":
                    return reply.done
        finally:
            over.set()
            admitted.set()
        raise NodeError("the coordinator ended the upload without saying whether it accepted the update")

    def _secure(self, what: str, request: pb.SecAggRequest, reply_kind: str) -> pb.SecAggReply:
        """One SecureAggregate call: retried while the coordinator is unreachable; a round the coordinator
        gave up (FAILED_PRECONDITION) is RoundAbandoned, a refusal ends the node."""
        try:
            reply = self._retrying(what, lambda: self._stub.SecureAggregate(request, timeout=TRANSFER_DEADLINE_S))
        except grpc.RpcError as exc:
            if _code(exc) == grpc.StatusCode.FAILED_PRECONDITION:
                raise RoundAbandoned(_details(exc)) from None
            if _code(exc) == grpc.StatusCode.UNAUTHENTICATED:
                raise SessionLost(_details(exc)) from None
            raise NodeError(f"the coordinator refused this hospital's {what}: {_details(exc)}") from None
        if reply.WhichOneof("stage") != reply_kind:
            raise NodeError(f"the coordinator answered this hospital's {what} with the wrong stage")
        return reply

    def secure_keys(self, session: Session, round_number: int, keys: PublicKeys) -> list[PublicKeys]:
        request = pb.SecAggRequest(session_id=session.id, round=round_number, keys=secure.keys_to_proto(keys))
        return self._decoded(lambda: secure.relayed_from_proto(self._secure("round keys", request, "keys").keys))

    def secure_shares(self, session: Session, round_number: int, bundles: list[ShareBundle]) -> list[ShareBundle]:
        request = pb.SecAggRequest(session_id=session.id, round=round_number, shares=secure.bundles_to_proto(bundles))
        return self._decoded(lambda: secure.bundles_from_proto(self._secure("shares", request, "shares").shares))

    def secure_await_unmask(self, session: Session, round_number: int) -> UnmaskRequest:
        request = pb.SecAggRequest(session_id=session.id, round=round_number, await_unmask=pb.AwaitUnmask())
        return self._decoded(lambda: secure.unmask_from_proto(self._secure("wait for the unmasking", request,
                                                                           "unmask").unmask))  # fmt: skip

    def secure_confirm(self, session: Session, round_number: int, signature: bytes) -> dict[str, bytes]:
        request = pb.SecAggRequest(session_id=session.id, round=round_number, confirmation=signature)
        reply = self._secure("confirmation", request, "confirmations")
        return self._decoded(lambda: secure.confirmations_from_proto(reply.confirmations))

    def secure_reveal(self, session: Session, round_number: int, reveal: Reveal) -> None:
        request = pb.SecAggRequest(session_id=session.id, round=round_number, reveal=secure.reveal_to_proto(reveal))
        self._secure("shares for the unmasking", request, "done")

    @staticmethod
    def _decoded(read: Callable[[], T]) -> T:
        try:
            return read()
        except WireFormatError as exc:
            raise NodeError(f"the coordinator sent an invalid secure-aggregation message: {exc}") from None

    def heartbeat(self, session: Session) -> None:
        try:
            self._stub.Heartbeat(pb.HeartbeatRequest(session_id=session.id), timeout=10.0)
        except Exception as exc:  # a missed beat is never fatal: the next call tells what is wrong
            log.debug("heartbeat failed: %s", exc)

    def leave(self, session: Session, reason: str) -> None:
        try:
            self._stub.Leave(pb.LeaveRequest(session_id=session.id, reason=reason), timeout=5.0)
        except grpc.RpcError as exc:
            log.debug("leave failed: %s", _details(exc))

    @staticmethod
    def _session_error(exc: grpc.RpcError) -> Exception:
        if _code(exc) == grpc.StatusCode.UNAUTHENTICATED:
            return SessionLost(_details(exc))
        return NodeError(f"the coordinator ended this hospital's session: {_details(exc)}")

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Retry transport failures with backoff until max_wait seconds have passed without success."""
        backoff = Backoff()
        deadline: float | None = None
        while True:
            try:
                result = call()
                self._connected = True
                return result
            except grpc.RpcError as exc:
                if _code(exc) not in RETRYABLE:
                    raise
                if self._tls and (reason := tls_failure(_details(exc), self._server, self._server_name)):
                    raise NodeError(reason) from None
                seen = _details(exc)
                if not self._connected and self._diagnose is not None and (diagnosis := self._diagnose()):
                    if diagnosis.final:
                        raise NodeError(diagnosis.text) from None  # refused, not down: retrying would only hide it
                    seen = diagnosis.text
                now = self._clock()
                deadline = deadline if deadline is not None else now + self._max_wait
                if now >= deadline:
                    raise NodeError(
                        f"cannot reach the coordinator at {self._server} ({what}) for {self._max_wait:.0f} s: {seen}"
                    ) from None
                delay = min(backoff.next_delay(), deadline - now)
                log.warning("%s: coordinator unreachable (%s); retrying in %.1f s", what, seen, delay)
                self._sleep(delay)
