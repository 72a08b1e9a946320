"""The gRPC face of fed-admin, as thin as the federation's: authenticate the operator, call
server/control.py, map its errors to status codes (the servicer's table), log what was done.

Under TLS the operator is the name on a certificate made with ``fed-certs admin`` (server/auth.py
refuses a hospital's certificate here, and an operator's as a hospital). An --insecure coordinator
has no way to tell who is calling, so it takes these commands only from its own machine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import NoReturn, cast

import grpc

from medfed.common.limits import MAX_TEXT
from medfed.common.peer_text import cleaned
from medfed.common.wire.proto import pb, pb_grpc
from medfed.server.auth import AuthContext, PeerAuthenticator
from medfed.server.control import RunControl
from medfed.server.coordinator import Coordinator
from medfed.server.errors import CoordinatorError, PermissionDenied
from medfed.server.refusal_log import RefusalLog
from medfed.server.servicer import abort, peer_of, status_for

log = logging.getLogger("medfed.server")

LOOPBACK_PEERS = ("ipv4:127.", "ipv6:[::1]", "unix:")


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, coordinator: Coordinator, control: RunControl, authenticator: PeerAuthenticator | None) -> None:
        self._coordinator, self._control, self._auth = coordinator, control, authenticator
        self._refusals = RefusalLog(log)

    def _operator(self, context: grpc.ServicerContext) -> str:
        if self._auth is not None:
            return self._auth.identify(cast(AuthContext, context.auth_context()), admin=True)
        if not context.peer().startswith(LOOPBACK_PEERS):
            raise PermissionDenied(
                "this coordinator runs --insecure and so takes fed-admin commands only from its own machine"
            )
        return "local operator"

    def _refuse(self, context: grpc.ServicerContext, what: str, exc: CoordinatorError) -> NoReturn:
        peer = peer_of(context, None)
        self._refusals.refused(peer, f"admin {what}", exc)
        self._coordinator.monitor.refused(cleaned(peer, MAX_TEXT), f"admin {what}", status_for(exc).name, str(exc))
        abort(context, exc)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        try:
            self._operator(context)
        except CoordinatorError as exc:
            self._refuse(context, "status", exc)
        return pb.StatusReply(status_json=json.dumps(self._coordinator.monitor.snapshot().to_json(), allow_nan=False))

    def _command(self, context: grpc.ServicerContext, what: str, act: Callable[[str], str]) -> pb.AdminReply:
        """An operator's command: who it is, then ``act(operator)``'s one-line answer, or the refusal."""
        try:
            return pb.AdminReply(message=act(self._operator(context)))
        except CoordinatorError as exc:
            self._refuse(context, what, exc)

    def Stop(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.AdminReply:
        reason = cleaned(request.reason)
        return self._command(context, "stop", lambda op: self._control.stop(op, resumable=request.resumable,
                                                                             reason=reason))  # fmt: skip

    def Remove(self, request: pb.RemoveRequest, context: grpc.ServicerContext) -> pb.AdminReply:
        name, reason = cleaned(request.name, MAX_TEXT), cleaned(request.reason)
        return self._command(context, "remove", lambda op: self._control.remove(op, name, reason))

    def Extend(self, request: pb.ExtendRequest, context: grpc.ServicerContext) -> pb.AdminReply:
        return self._command(context, "extend", lambda op: self._control.extend(op, request.rounds))
