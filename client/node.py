"""A hospital's connection to the coordinator: join, long-poll for tasks, train, send the update back.

The hospital only dials out. A coordinator that cannot be reached is retried with exponential backoff
and jitter for at most ``max_wait`` seconds of continuous failure; a refusal (incompatible data, a
rejected update) is final and ends the process with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import grpc
import numpy as np

from medfed.client.privacy import HospitalPrivacy
from medfed.client.probe import Diagnosis
from medfed.client.trainer import LocalResult, Trainer
from medfed.common import __version__
from medfed.common.compression import encode_update
from medfed.common.data.folders import HospitalData
from medfed.common.errors import WireFormatError
from medfed.common.limits import MAX_MODEL_BYTES
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.peer_text import STATUS_LIMIT, cleaned
from medfed.common.retry import Backoff
from medfed.common.tensors import Chunk, StateDict, from_chunks
from medfed.common.wire.convert import (
    info_to_proto,
    layout_from_proto,
    layout_to_proto,
    model_spec_from_proto,
    report_to_proto,
    settings_from_proto,
)
from medfed.common.wire.proto import pb, pb_grpc

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


MAX_REJOINS = 3
HEARTBEAT_INTERVAL_S = 15.0


class NodeError(Exception):
    """Why this hospital has to stop."""


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


@dataclass(frozen=True)
class ReceivedTask:
    round: int
    total_rounds: int
    settings: TrainSettings
    spec: ModelSpec
    state: StateDict


def _details(exc: grpc.RpcError) -> str:
    """The status message, as the coordinator (or gRPC) wrote it, cut and escaped for a log line."""
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return cleaned(details or str(exc.code() if isinstance(exc, grpc.Call) else exc), STATUS_LIMIT)


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


class HospitalNode:
    def __init__(
        self,
        stub: pb_grpc.FederationStub,
        data: HospitalData,
        trainer: Trainer,
        *,
        name: str,
        server: str,
        max_wait: float,
        tls: bool = False,
        server_name: str | None = None,
        diagnose: Callable[[], Diagnosis | None] | None = None,
        privacy: HospitalPrivacy | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub, self._data, self._trainer = stub, data, trainer
        self._name, self._server, self._max_wait = name, server, max_wait
        self._sleep, self._clock = sleep, clock
        self._tls = tls
        self._server_name = server_name
        self._diagnose = diagnose
        self._privacy = privacy
        self._heartbeat_interval = heartbeat_interval
        self._stop = threading.Event()
        self._federation = ""
        self._session: str | None = None
        self._connected = False
        self._rejoins = 0  # in a row, without a task in between

    def run(self) -> int:
        """Take part until the coordinator says the federation is over; returns the rounds trained."""
        self._join()
        beats = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beats.start()
        try:
            return self._take_part()
        finally:
            self._stop.set()
            beats.join(timeout=5)

    def _heartbeats(self) -> None:
        """A sign of life every HEARTBEAT_INTERVAL_S while this hospital downloads, trains or uploads."""
        while not self._stop.wait(self._heartbeat_interval):
            session = self._session
            if session is None:
                continue
            try:
                self._stub.Heartbeat(pb.HeartbeatRequest(session_id=session), timeout=10.0)
            except Exception as exc:  # a missed beat is never fatal: the next call tells what is wrong
                log.debug("heartbeat failed: %s", exc)

    def _take_part(self) -> int:
        """Returns the number of distinct rounds trained (a round run again after a coordinator restart
        counts once)."""
        trained: list[int] = []
        while True:
            message = self._poll()
            if isinstance(message, pb.Finished) and message.resumable:
                self._await_return(cleaned(message.reason))
                continue
            if isinstance(message, pb.Finished):
                distinct = len(set(trained))
                again = f" ({len(trained) - distinct} of them twice: run again after a restart)" * (
                    len(trained) > distinct
                )
                log.info(
                    "federation finished (%s); this hospital took part in %d of the %d round(s)%s",
                    cleaned(message.reason), distinct, message.rounds_completed or distinct, again,
                )  # fmt: skip
                return distinct
            if message is None:
                continue
            self._rejoins = 0
            planned = self._privacy.plan(message.settings.local_dp, message.settings) if self._privacy else None
            result = self._trainer.run(message.round, message.settings, message.spec, message.state, planned)
            if self._privacy is not None and planned is not None:  # spent before the update leaves
                result = replace(result, privacy=self._privacy.record(self._federation, message.round, planned))
            self._log_round(message, result)
            self._submit(message, result)
            trained.append(message.round)

    def _await_return(self, reason: str) -> None:
        """The coordinator stopped before its last round (a redeploy): join it again when it is back."""
        log.warning(
            "the coordinator stopped (%s); waiting up to %.0f s (--max-wait) for it to come back",
            reason,
            self._max_wait,
        )
        self._session = None
        backoff = Backoff()
        deadline = self._clock() + self._max_wait
        while True:
            try:
                self._join(retrying=False)
                return
            except grpc.RpcError as exc:
                # Down (UNAVAILABLE), or still the stopping coordinator ("the federation is over").
                if _code(exc) not in (*RETRYABLE, grpc.StatusCode.FAILED_PRECONDITION):
                    raise NodeError(f"the coordinator refused {self._name}: {_details(exc)}") from None
            now = self._clock()
            if now >= deadline:
                raise NodeError(
                    f"the coordinator stopped ({reason}) and did not come back within {self._max_wait:.0f} s"
                )
            self._sleep(min(backoff.next_delay(), deadline - now))

    def leave(self, reason: str) -> None:
        if self._session is None:
            return
        try:
            self._stub.Leave(pb.LeaveRequest(session_id=self._session, reason=reason), timeout=5.0)
        except grpc.RpcError as exc:
            log.debug("leave failed: %s", _details(exc))

    # ----- calls -------------------------------------------------------------------------------

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

    def _join(self, *, retrying: bool = True) -> None:
        train = self._data.split("train")
        request = pb.JoinRequest(
            name=self._name,
            num_examples=len(train),
            data=info_to_proto(self._data.info),
            client_version=__version__,
            classes=[]
            if self._privacy is not None and self._privacy.own is not None
            else np.flatnonzero(np.bincount(train.labels)).tolist(),
        )
        if not retrying:
            reply = self._stub.Join(request, timeout=JOIN_DEADLINE_S)
            self._session, self._federation = reply.session_id, reply.federation_id
            log.info("joined the federation at %s again as %s", self._server, self._name)
            return
        try:
            reply = self._retrying("join", lambda: self._stub.Join(request, timeout=JOIN_DEADLINE_S))
        except grpc.RpcError as exc:
            raise NodeError(f"the coordinator refused {self._name}: {_details(exc)}") from None
        self._session = reply.session_id
        self._federation = reply.federation_id
        log.info("joined the federation at %s as %s (%d training images)", self._server, self._name, len(train))

    def _fetch(self) -> ReceivedTask | pb.Finished | None:
        call = self._stub.GetTask(pb.TaskRequest(session_id=self._session or ""), timeout=TRANSFER_DEADLINE_S)
        stream: Iterator[pb.TaskMessage] = iter(call)
        first = next(stream, None)
        kind = first.WhichOneof("kind") if first is not None else None
        if first is None or kind == "wait":
            return None
        if kind == "finished":
            return first.finished
        if kind != "task":
            raise WireFormatError(f"unexpected {kind} message at the start of a task")
        header = first.task
        layout = layout_from_proto(header.tensors, max_total_bytes=MAX_MODEL_BYTES)
        state = from_chunks(layout, _chunks(stream))
        settings = settings_from_proto(header.config)
        return ReceivedTask(header.round, header.total_rounds, settings, model_spec_from_proto(header.model), state)

    def _poll(self) -> ReceivedTask | pb.Finished | None:
        try:
            return self._retrying("waiting for a task", self._fetch)
        except WireFormatError as exc:
            raise NodeError(f"the coordinator sent an invalid task: {exc}") from None
        except grpc.RpcError as exc:
            self._handle_session_error(exc)
            return None

    def _handle_session_error(self, exc: grpc.RpcError) -> None:
        if _code(exc) == grpc.StatusCode.UNAUTHENTICATED and self._rejoins < MAX_REJOINS:
            log.warning("the coordinator no longer knows this hospital (%s); joining again", _details(exc))
            self._rejoins += 1
            self._join()
            return
        raise NodeError(f"the coordinator ended this hospital's session: {_details(exc)}") from None

    def _submit(self, task: ReceivedTask, result: LocalResult) -> None:
        round_number, encoding = task.round, task.settings.update_encoding
        encoded = encode_update(result.state, task.state, encoding)
        header = pb.UpdateHeader(
            session_id=self._session or "",
            round=round_number,
            num_examples=result.num_examples,
            metrics=result.metrics,
            kind=pb.UPDATE_KIND_DELTA if encoding == "int8" else pb.UPDATE_KIND_WEIGHTS,
            tensors=layout_to_proto(encoded.layout),
        )
        if result.privacy is not None:
            header.privacy.CopyFrom(report_to_proto(result.privacy))

        def messages() -> Iterator[pb.UpdateMessage]:
            yield pb.UpdateMessage(header=header)
            for offset, data in encoded.chunks():
                yield pb.UpdateMessage(chunk=pb.Chunk(offset=offset, data=data))

        try:
            self._retrying(
                "sending the update", lambda: self._stub.SubmitUpdate(messages(), timeout=TRANSFER_DEADLINE_S)
            )
        except grpc.RpcError as exc:
            code = _code(exc)
            if code == grpc.StatusCode.ALREADY_EXISTS:
                log.info("round %d: the coordinator already had this update", round_number)
            elif code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED):
                log.warning("round %d: update discarded by the coordinator: %s", round_number, _details(exc))
            elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise NodeError(f"the coordinator refused this hospital's update: {_details(exc)}") from None
            else:
                self._handle_session_error(exc)

    def _log_round(self, task: ReceivedTask, result: LocalResult) -> None:
        m = result.local_metrics
        if not m:
            log.info("round %d/%d: no local training asked for; returning the model", task.round, task.total_rounds)
            return
        text = f"train loss {m['train_loss']:.4f}, accuracy {m['train_accuracy']:.4f}"
        if "val_accuracy" in m:
            text += f"; validation accuracy {m['val_accuracy']:.4f}"
        if (p := result.privacy) is not None:
            text += f"; privacy spent ε = {p.epsilon:.3g} at δ = {p.delta:.2g} after {p.releases} release(s)"
        log.info(
            "round %d/%d: %d epoch(s) on %d images in %.1f s: %s",
            task.round,
            task.total_rounds,
            task.settings.local_epochs,
            result.num_examples,
            m["train_seconds"],
            text,
        )


def _chunks(stream: Iterator[pb.TaskMessage]) -> Iterator[Chunk]:
    for message in stream:
        if message.WhichOneof("kind") != "chunk":
            raise WireFormatError("expected only chunks after the task header")
        yield message.chunk.offset, message.chunk.data
