"""The gRPC face of the coordinator, kept thin: decode the request, call the Coordinator, map its
errors to status codes, encode the reply. All round logic lives in coordinator.py."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import grpc

from medfed.common import __version__
from medfed.common.serde import WireFormatError, from_chunks, layout_from_proto, layout_to_proto
from medfed.common.transport import server_options
from medfed.common.wire import info_from_proto, model_spec_to_proto, settings_to_proto
from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc
from medfed.server.coordinator import (
    Coordinator,
    CoordinatorError,
    DuplicateUpdate,
    Finished,
    InvalidUpdate,
    Rejected,
    SessionReplaced,
    Task,
    UnknownSession,
)

log = logging.getLogger("medfed.server")

MAX_MODEL_BYTES = 16 << 30

_STATUS: dict[type[Exception], grpc.StatusCode] = {
    UnknownSession: grpc.StatusCode.NOT_FOUND,
    SessionReplaced: grpc.StatusCode.ABORTED,
    Rejected: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidUpdate: grpc.StatusCode.INVALID_ARGUMENT,
    DuplicateUpdate: grpc.StatusCode.ALREADY_EXISTS,
    WireFormatError: grpc.StatusCode.INVALID_ARGUMENT,
}


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
    context.abort(code, str(exc))
    raise AssertionError("unreachable: context.abort raises")


def _only_chunks(messages: Iterable[pb.UpdateMessage]) -> Iterator[bytes]:
    for message in messages:
        if message.WhichOneof("kind") != "chunk":
            raise WireFormatError("expected only chunks after the update header")
        yield message.chunk


def task_messages(task: Task) -> Iterator[pb.TaskMessage]:
    header = pb.TaskHeader(
        round=task.round,
        total_rounds=task.total_rounds,
        config=settings_to_proto(task.settings),
        model=model_spec_to_proto(task.model),
        tensors=layout_to_proto(task.payload.layout),
    )
    yield pb.TaskMessage(task=header)
    for chunk in task.payload.chunks():
        yield pb.TaskMessage(chunk=chunk)


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(self, coordinator: Coordinator, poll_timeout: float) -> None:
        self._coordinator = coordinator
        self._poll_timeout = poll_timeout

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        try:
            session_id = self._coordinator.join(request.name, request.num_examples, info_from_proto(request.data))
        except (CoordinatorError, WireFormatError) as exc:
            _abort(context, exc)
        return pb.JoinReply(session_id=session_id, federation_id=self._coordinator.federation_id)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.TaskMessage]:
        context.add_callback(self._coordinator.wake)
        try:
            instruction = self._coordinator.next_instruction(request.session_id, self._poll_timeout, context.is_active)
        except CoordinatorError as exc:
            _abort(context, exc)
        if isinstance(instruction, Task):
            yield from task_messages(instruction)
        elif isinstance(instruction, Finished):
            yield pb.TaskMessage(
                finished=pb.Finished(reason=instruction.reason, rounds_completed=instruction.rounds_completed)
            )
        else:
            yield pb.TaskMessage(wait=pb.Wait(reason=instruction.reason))

    def SubmitUpdate(
        self, request_iterator: Iterator[pb.UpdateMessage], context: grpc.ServicerContext
    ) -> pb.SubmitReply:
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "header":
                raise WireFormatError("an update must start with its header")
            header = first.header
            if header.kind not in (pb.UPDATE_KIND_UNSPECIFIED, pb.UPDATE_KIND_WEIGHTS):
                raise WireFormatError("this coordinator accepts only full-weight updates")
            layout = layout_from_proto(header.tensors, max_total_bytes=MAX_MODEL_BYTES)
            name = self._coordinator.check_update(header.session_id, header.round, layout)
            state = from_chunks(layout, _only_chunks(request_iterator))
            self._coordinator.submit_update(
                header.session_id, header.round, header.num_examples, dict(header.metrics), state
            )
        except (CoordinatorError, WireFormatError) as exc:
            log.warning("update refused: %s", exc)
            _abort(context, exc)
        log.debug("round %d: update from %s accepted", header.round, name)
        return pb.SubmitReply(message=f"update for round {header.round} accepted")

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        try:
            self._coordinator.leave(request.session_id)
        except CoordinatorError as exc:
            _abort(context, exc)
        return pb.LeaveReply()


def create_server(
    coordinator: Coordinator, address: str, *, poll_timeout: float = 20.0, max_workers: int = 256
) -> tuple[grpc.Server, int]:
    """Build (not start) a server for ``coordinator`` bound to ``address``; returns it and its port.

    SO_REUSEPORT is off so that a port already in use is an error instead of two servers sharing it.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=server_options(),
        maximum_concurrent_rpcs=None,
    )
    pb_grpc.add_FederationServicer_to_server(FederationServicer(coordinator, poll_timeout), server)
    port = server.add_insecure_port(address)
    log.debug("medfed %s server bound to port %d", __version__, port)
    return server, port
