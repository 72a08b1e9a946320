"""The gRPC face of the coordinator, kept thin: authenticate, decode the request, call the Coordinator,
map its errors to status codes, encode the reply. All round logic lives in coordinator.py; the bounds
on transfers (send slots, stall deadlines) in transfers.py. Every refusal is logged through
refusal_log.py (a few lines per peer at a time) and its status message is cut and escaped."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, cast

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from medfed.common.errors import WireFormatError, WireTooLarge
from medfed.common.limits import MAX_TEXT
from medfed.common.messages import FinishedNotice, TaskHeader
from medfed.common.peer_text import STATUS_LIMIT, cleaned, quoted
from medfed.common.provenance.digests import UpdateDigest
from medfed.common.wire.convert import (
    check_text,
    info_from_proto,
)
from medfed.common.wire.options import server_options
from medfed.common.wire.proto import pb, pb_grpc
from medfed.common.wire.provenance import receipt_to_proto
from medfed.common.wire.stream import (
    finished_message,
    read_update_header,
    task_messages,
    update_chunks,
    wait_message,
)
from medfed.server.auth import AuthContext, PeerAuthenticator, certificate_expiry, peer_certificate
from medfed.server.coordinator import Coordinator
from medfed.server.errors import (
    CoordinatorError,
    DuplicateUpdate,
    InvalidRequest,
    InvalidUpdate,
    NotFound,
    PermissionDenied,
    Rejected,
    SessionReplaced,
    TooLarge,
    Unauthenticated,
    UploadInProgress,
)
from medfed.server.refusal_log import RefusalLog
from medfed.server.rounds import Finished, Task
from medfed.server.secure_exchange import secure_exchange
from medfed.server.transfers import SendSlots, TransferWatch

log = logging.getLogger("medfed.server")


_STATUS: dict[type[Exception], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    SessionReplaced: grpc.StatusCode.ABORTED,
    Rejected: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidUpdate: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DuplicateUpdate: grpc.StatusCode.ALREADY_EXISTS,
    UploadInProgress: grpc.StatusCode.UNAVAILABLE,
    WireTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    WireFormatError: grpc.StatusCode.INVALID_ARGUMENT,
}

Refusal = (CoordinatorError, WireFormatError)


def status_for(exc: Exception) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    context.abort(status_for(exc), cleaned(str(exc), STATUS_LIMIT))
    raise AssertionError("unreachable: context.abort raises")


def peer_of(context: grpc.ServicerContext, caller: str | None) -> str:
    """Who to charge a refusal to in the log: the certificate's name (also when it was refused, say as
    revoked), else the address without its port."""
    if caller is None:
        # grpc-stubs says Mapping[str, bytes]; at run time each property maps to a list of bytes values.
        names = cast(AuthContext, context.auth_context()).get("x509_common_name") or []
        caller = names[0].decode(errors="replace") if names else None
    return caller or context.peer().rsplit(":", 1)[0]


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        poll_timeout: float,
        authenticator: PeerAuthenticator | None = None,
        upload_timeout: float = 600.0,
        max_sending: int = 4,
        stall_timeout: float = 60.0,
    ) -> None:
        self._coordinator = coordinator
        self._poll_timeout = poll_timeout
        self._auth = authenticator
        self._upload_timeout = upload_timeout
        self.send_slots = SendSlots(max_sending, headroom=coordinator.intake.headroom)
        self.watch = TransferWatch(stall_timeout)
        self._refusals = RefusalLog(log)

    def _caller(self, context: grpc.ServicerContext) -> str | None:
        """The TLS identity (certificate common name), or None on an --insecure server."""
        if self._auth is None:
            return None
        # grpc-stubs says Mapping[str, bytes]; at run time each property maps to a list of bytes values.
        return self._auth.identify(cast(AuthContext, context.auth_context()))

    def _refuse(self, context: grpc.ServicerContext, what: str, exc: Exception, caller: str | None = None) -> NoReturn:
        peer = peer_of(context, caller)
        self._refusals.refused(peer, what, exc)
        self._coordinator.monitor.refused(cleaned(peer, MAX_TEXT), what, status_for(exc).name, cleaned(str(exc)))
        abort(context, exc)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        caller = None
        try:
            caller = self._caller(context)
            if caller is not None and request.name and request.name != caller:
                raise PermissionDenied(
                    f"the certificate is for {quoted(caller)}, but the request names {quoted(request.name)}"
                )
            check_text("client_version", request.client_version)
            name = caller or request.name
            expires = certificate_expiry(cast(AuthContext, context.auth_context())) if caller else None
            session_id = self._coordinator.join(
                name, request.num_examples, info_from_proto(request.data), classes=tuple(request.classes),
                certificate_expires=expires,
            )  # fmt: skip
        except Refusal as exc:
            self._refuse(context, "join", exc, caller)
        return pb.JoinReply(session_id=session_id, federation_id=self._coordinator.federation_id)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.TaskMessage]:
        context.add_callback(self._coordinator.wake)
        context.add_callback(self.send_slots.wake)
        caller = None
        try:
            caller = self._caller(context)
            instruction = self._coordinator.next_instruction(
                request.session_id, self._poll_timeout, caller=caller, is_active=context.is_active
            )
        except Refusal as exc:
            self._refuse(context, "poll", exc, caller)
        if isinstance(instruction, Task):
            yield from self._send(request.session_id, instruction, context)
        elif isinstance(instruction, Finished):
            yield finished_message(
                FinishedNotice(instruction.reason, instruction.rounds_completed, instruction.resumable)
            )
        else:
            yield wait_message(instruction.reason)

    def _send(self, session_id: str, task: Task, context: grpc.ServicerContext) -> Iterator[pb.TaskMessage]:
        """Stream the model within a send slot of this hospital's own, under the stall watch; a session
        that ends meanwhile (a revoked certificate) is cut off at the next chunk."""
        name = self._coordinator.name_of(session_id) or "?"
        coordinator = self._coordinator
        slot = self.send_slots.acquire(
            name, context.cancel, lambda: context.is_active() and coordinator.finished is None
        )
        if slot is None:
            coordinator.monitor.download_ended(name)
            return  # the hospital hung up, asked again, or the run ended while it waited for a slot
        what = f"the download of round {task.round}'s model to {name}"
        sent = False
        try:
            with slot, self.watch.watch(what, context.cancel, timeout=self._upload_timeout) as ticket:
                header = TaskHeader(task.round, task.total_rounds, task.settings, task.model)
                for message in task_messages(header, task.payload):  # gRPC closes this generator at the stream's end
                    if (closed := coordinator.session_error(session_id)) is not None:
                        self._refuse(context, "download", closed, name)
                    ticket.progress()
                    yield message
                    slot.sent(len(message.chunk.data))
                sent = True
        finally:
            if sent:
                coordinator.monitor.downloaded(name, task.payload.layout.total_bytes)
            else:
                coordinator.monitor.download_ended(name)

    def Upload(
        self, request_iterator: Iterator[pb.UpdateMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.UploadReply]:
        """The header, checked; then, once a receive slot is this upload's, ``admitted`` (the hospital sends
        its bytes only then); then the bytes, into memory or a file; then ``done``."""
        caller = None
        # A hospital that stalls mid-upload must not hold its slot and a thread forever.
        with self.watch.watch("an upload", context.cancel, timeout=self._upload_timeout) as ticket:
            try:
                caller = self._caller(context)
                header = read_update_header(request_iterator)
                with self._coordinator.begin_update(
                    header.session_id,
                    header.round,
                    header.num_examples,
                    header.metrics,
                    header.layout,
                    caller=caller,
                    privacy=header.privacy,
                    delta=header.delta,
                    signature=header.signature,
                    certificate=peer_certificate(cast(AuthContext, context.auth_context())) if caller else None,
                ) as pending:
                    ticket.describe(f"the upload of {pending.name}'s update for round {header.round}")
                    ticket.progress()  # it holds a receive slot from here on: a stall now counts
                    yield pb.UploadReply(admitted=pb.Admitted())
                    digest = UpdateDigest(self._coordinator.federation_id, header.round, header.num_examples,
                                          header.layout, delta=header.delta)  # fmt: skip
                    state = pending.receive(update_chunks(request_iterator, ticket.progress, digest))
                    receipt = pending.commit(state, digest.digest())
            except Refusal as exc:
                self._refuse(context, "update", exc, caller)
            except grpc.RpcError:
                log.warning(
                    "an upload from %s was abandoned (the hospital went away, stalled, or took longer than %.0f s)",
                    quoted(peer_of(context, caller)), self._upload_timeout,
                )  # fmt: skip
                abort(context, Rejected("upload abandoned"))
        log.debug("round %d: update from %s accepted", header.round, pending.name)
        done = pb.SubmitReply(message=f"update for round {header.round} accepted")
        if receipt is not None:
            done.receipt.CopyFrom(receipt_to_proto(receipt))
        yield pb.UploadReply(done=done)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        caller = None
        try:
            caller = self._caller(context)
            self._coordinator.heartbeat(request.session_id, caller=caller)
        except Refusal as exc:
            self._refuse(context, "heartbeat", exc, caller)
        return pb.HeartbeatReply()

    def SecureAggregate(self, request: pb.SecAggRequest, context: grpc.ServicerContext) -> pb.SecAggReply:
        caller = None
        try:
            caller = self._caller(context)
            stage, send, answer = secure_exchange(request)
            return self._coordinator.secure_stage(
                request.session_id, request.round, stage, send, answer, caller=caller, timeout=self._upload_timeout
            )
        except Refusal as exc:
            self._refuse(context, "secure aggregation", exc, caller)

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        caller = None
        try:
            caller = self._caller(context)
            self._coordinator.leave(request.session_id, caller=caller, reason=cleaned(request.reason, MAX_TEXT))
        except Refusal as exc:
            self._refuse(context, "leave", exc, caller)
        return pb.LeaveReply()


def create_server(
    coordinator: Coordinator,
    address: str,
    *,
    credentials: grpc.ServerCredentials | None = None,
    authenticator: PeerAuthenticator | None = None,
    poll_timeout: float = 20.0,
    upload_timeout: float = 600.0,
    max_workers: int = 256,
    health: HealthServicer | None = None,
    max_sending: int = 4,
    stall_timeout: float = 60.0,
    admin: pb_grpc.AdminServicer | None = None,
) -> tuple[grpc.Server, int]:
    """Build (not start) a server for ``coordinator`` bound to ``address``; returns it and its port.

    With ``credentials`` it serves TLS only. SO_REUSEPORT is off so that a port already in use is an
    error instead of two servers sharing it.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=server_options(),
    )
    servicer = FederationServicer(coordinator, poll_timeout, authenticator, upload_timeout, max_sending, stall_timeout)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if admin is not None:
        pb_grpc.add_AdminServicer_to_server(admin, server)
    if credentials is None:
        return server, server.add_insecure_port(address)
    return server, server.add_secure_port(address, credentials)
