"""The gRPC face of the coordinator, kept thin: authenticate, decode the request, call the Coordinator,
map its errors to status codes, encode the reply. All round logic lives in coordinator.py."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, cast

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from medfed.common.serde import (
    Chunk,
    WireFormatError,
    WireTooLarge,
    from_chunks,
    layout_from_proto,
    layout_to_proto,
)
from medfed.common.transport import server_options
from medfed.common.wire import (
    MAX_TEXT,
    check_text,
    info_from_proto,
    metrics_from_proto,
    model_spec_to_proto,
    report_from_proto,
    settings_to_proto,
)
from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc
from medfed.server.auth import AuthContext, PeerAuthenticator
from medfed.server.coordinator import Coordinator, Finished, Task
from medfed.server.errors import (
    CoordinatorError,
    DuplicateUpdate,
    InvalidUpdate,
    PermissionDenied,
    Rejected,
    SessionReplaced,
    TooLarge,
    Unauthenticated,
    UploadInProgress,
)

log = logging.getLogger("medfed.server")

MAX_MODEL_BYTES = 16 << 30

_STATUS: dict[type[Exception], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    SessionReplaced: grpc.StatusCode.ABORTED,
    Rejected: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidUpdate: grpc.StatusCode.INVALID_ARGUMENT,
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


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    context.abort(status_for(exc), str(exc))
    raise AssertionError("unreachable: context.abort raises")


def _chunks(messages: Iterable[pb.UpdateMessage]) -> Iterator[Chunk]:
    for message in messages:
        if message.WhichOneof("kind") != "chunk":
            raise WireFormatError("expected only chunks after the update header")
        yield message.chunk.offset, message.chunk.data


def task_messages(task: Task) -> Iterator[pb.TaskMessage]:
    header = pb.TaskHeader(
        round=task.round,
        total_rounds=task.total_rounds,
        config=settings_to_proto(task.settings),
        model=model_spec_to_proto(task.model),
        tensors=layout_to_proto(task.payload.layout),
    )
    yield pb.TaskMessage(task=header)
    for offset, data in task.payload.chunks():
        yield pb.TaskMessage(chunk=pb.Chunk(offset=offset, data=data))


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        poll_timeout: float,
        authenticator: PeerAuthenticator | None = None,
        upload_timeout: float = 600.0,
    ) -> None:
        self._coordinator = coordinator
        self._poll_timeout = poll_timeout
        self._auth = authenticator
        self._upload_timeout = upload_timeout

    def _caller(self, context: grpc.ServicerContext) -> str | None:
        """The TLS identity (certificate common name), or None on an --insecure server."""
        if self._auth is None:
            return None
        # grpc-stubs says Mapping[str, bytes]; at run time each property maps to a list of bytes values.
        return self._auth.identify(cast(AuthContext, context.auth_context()))

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        try:
            caller = self._caller(context)
            if caller is not None and request.name and request.name != caller:
                raise PermissionDenied(f"the certificate is for {caller}, but the request names {request.name!r}")
            check_text("client_version", request.client_version)
            name = caller or request.name
            session_id = self._coordinator.join(
                name, request.num_examples, info_from_proto(request.data), classes=tuple(request.classes)
            )
        except Refusal as exc:
            log.warning("join refused: %s", exc)
            _abort(context, exc)
        return pb.JoinReply(session_id=session_id, federation_id=self._coordinator.federation_id)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.TaskMessage]:
        context.add_callback(self._coordinator.wake)
        try:
            caller = self._caller(context)
            instruction = self._coordinator.next_instruction(
                request.session_id, self._poll_timeout, caller=caller, is_active=context.is_active
            )
        except Refusal as exc:
            _abort(context, exc)
        if isinstance(instruction, Task):
            if not self._coordinator.acquire_send_slot(context.is_active):
                return  # the hospital hung up, or the run ended, while it waited for a slot
            try:
                yield from task_messages(instruction)
            finally:  # also when gRPC drops the stream: the generator is closed then
                self._coordinator.release_send_slot()
        elif isinstance(instruction, Finished):
            finished = pb.Finished(
                reason=instruction.reason,
                rounds_completed=instruction.rounds_completed,
                resumable=instruction.resumable,
            )
            yield pb.TaskMessage(finished=finished)
        else:
            yield pb.TaskMessage(wait=pb.Wait(reason=instruction.reason))

    def SubmitUpdate(
        self, request_iterator: Iterator[pb.UpdateMessage], context: grpc.ServicerContext
    ) -> pb.SubmitReply:
        # A hospital that stalls mid-upload must not hold its slot and a thread forever.
        watchdog = threading.Timer(self._upload_timeout, context.cancel)
        watchdog.daemon = True
        watchdog.start()
        try:
            caller = self._caller(context)
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "header":
                raise WireFormatError("an update must start with its header")
            header = first.header
            if header.kind not in (pb.UPDATE_KIND_UNSPECIFIED, pb.UPDATE_KIND_WEIGHTS, pb.UPDATE_KIND_DELTA):
                raise WireFormatError(f"unknown update kind {header.kind}")
            layout = layout_from_proto(header.tensors, max_total_bytes=MAX_MODEL_BYTES)
            metrics = metrics_from_proto(header.metrics)
            privacy = report_from_proto(header.privacy) if header.HasField("privacy") else None
            with self._coordinator.begin_update(
                header.session_id,
                header.round,
                header.num_examples,
                metrics,
                layout,
                caller=caller,
                privacy=privacy,
                delta=header.kind == pb.UPDATE_KIND_DELTA,
            ) as pending:
                pending.commit(from_chunks(layout, _chunks(request_iterator)))
        except Refusal as exc:
            log.warning("update refused: %s", exc)
            _abort(context, exc)
        except grpc.RpcError:
            log.warning(
                "an upload was abandoned (the hospital went away or took longer than %.0f s)", self._upload_timeout
            )
            _abort(context, Rejected("upload abandoned"))
        finally:
            watchdog.cancel()
        log.debug("round %d: update from %s accepted", header.round, pending.name)
        return pb.SubmitReply(message=f"update for round {header.round} accepted")

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        try:
            self._coordinator.heartbeat(request.session_id, caller=self._caller(context))
        except Refusal as exc:
            _abort(context, exc)
        return pb.HeartbeatReply()

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        try:
            reason = "".join(c if c.isprintable() else " " for c in request.reason[:MAX_TEXT])
            self._coordinator.leave(request.session_id, caller=self._caller(context), reason=reason)
        except Refusal as exc:
            _abort(context, exc)
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
) -> tuple[grpc.Server, int]:
    """Build (not start) a server for ``coordinator`` bound to ``address``; returns it and its port.

    With ``credentials`` it serves TLS only. SO_REUSEPORT is off so that a port already in use is an
    error instead of two servers sharing it.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=server_options(),
    )
    servicer = FederationServicer(coordinator, poll_timeout, authenticator, upload_timeout)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if credentials is None:
        return server, server.add_insecure_port(address)
    return server, server.add_secure_port(address, credentials)
