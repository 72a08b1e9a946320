"""Uploads, for the coordinator (server/coordinator.py mixes this in).

An update is checked completely from its header (session, identity, round, selection, duplicate, tensor
table, size, sample count, metrics) and reserves its hospital's slot *before* a byte of it is accepted,
so no hospital can have two uploads in flight. Then it waits for one of ``max_receiving`` receive slots;
only once it holds one is it admitted (the servicer tells the hospital, which sends its bytes only
then), so a hospital waiting for a slot has sent nothing but its header, and an admitted upload can
stream as fast as its link allows. The first ``in_memory`` uploads admitted at a time are received into
memory, the others into files in the run folder (server/spool.py), so the coordinator's memory stays
flat in the number of hospitals uploading at once: the global model, the float64 sums (twice the model)
and ``in_memory`` updates. An upload is folded into the round's accumulator only after it arrived
whole, its signature checked and its values passed server/admission.py, under a separate lock so that
a 45 MB fold never blocks joins and polls; ``close_round`` takes that lock too, so no fold can land in a
closed round. A refused update changes nothing, and the round notes it for the audit chain; an accepted
one is answered with a signed receipt (server/audit_log.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
from cryptography import x509

from medfed.common.compression import DecodedUpdate
from medfed.common.messages import PrivacyReport
from medfed.common.provenance.digests import update_digest
from medfed.common.provenance.receipts import Receipt
from medfed.common.tensors import Chunk, Layout, encode, from_chunks
from medfed.server.admission import check_header, check_secure_header, check_signature, refusal
from medfed.server.errors import CoordinatorError, InvalidUpdate, PermissionDenied, Rejected
from medfed.server.intake import Admission, Intake, WaitingLine
from medfed.server.live.monitor import Monitor
from medfed.server.membership import Hospital
from medfed.server.rounds import Contribution, OpenRound, RefusedUpdate, UpdateProof
from medfed.server.secure_aggregation import SecureAccumulator
from medfed.server.spool import SpooledUpdate, spool
from medfed.server.strategy import AggregationError


class ReceiptIssuer(Protocol):
    """Signs receipts for accepted updates (server/audit_log.py)."""

    def receipt(self, hospital: str, round_number: int, update: bytes, num_examples: int) -> Receipt | None: ...


class PendingUpdate:
    """An upload whose header was accepted: its hospital's slot stays reserved until ``commit`` or exit.

    Entering waits for one of the coordinator's receive slots (the upload is then admitted); leaving
    frees both, and deletes what ``receive`` spooled to a file."""

    def __init__(
        self, coordinator: Uploads, current: OpenRound, contribution: Contribution, layout: Layout,
        signature: bytes = b"", certificate: x509.Certificate | None = None,
    ) -> None:  # fmt: skip
        self._coordinator, self._round, self._contribution = coordinator, current, contribution
        self._layout = layout
        self._signature, self._certificate = signature, certificate
        self.name = contribution.name
        self.admission: Admission | None = None
        """where it is received (memory or a file) and how much has arrived; set once it is admitted"""
        self._spooled: SpooledUpdate | None = None

    def receive(self, chunks: Iterable[Chunk]) -> Mapping[str, np.ndarray]:
        """The update's byte stream, into memory or into a file as the admission decided."""
        admission = self.admission
        assert admission is not None, "receive() before the upload was admitted"

        clock = self._coordinator.intake.clock

        def counted() -> Iterator[Chunk]:
            for chunk in chunks:
                admission.arrived(len(chunk[1]), clock())
                yield chunk

        if admission.in_memory:
            return from_chunks(self._layout, counted())
        self._spooled = spool(self._layout, counted(), self._coordinator.spool_dir)
        return self._spooled

    def commit(self, state: Mapping[str, np.ndarray], digest: bytes | None = None) -> Receipt | None:
        """Fold the received tensors (as the header described them, ``digest`` their digest as received)
        into the round; returns the coordinator's receipt for them (None without a signing key)."""
        decoded = DecodedUpdate(state, self._layout, self._round.task.payload.tensors())
        proof = UpdateProof(digest, self._signature, self._certificate)
        return self._coordinator._fold(self._round, replace(self._contribution, proof=proof), state, decoded)

    def __enter__(self) -> PendingUpdate:
        try:
            self.admission = self._coordinator._receive_slot(self._round, self._layout.total_bytes)
        except BaseException:
            self._coordinator._release(self._round, self.name, None)
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._spooled is not None:
            self._spooled.close()
        self._coordinator._release(self._round, self.name, self.admission)


class Uploads:
    """The coordinator's uploads; what they share with the rest of the coordinator is declared here."""

    _cond: threading.Condition
    _fold_lock: threading.Lock
    _round: OpenRound | None
    intake: Intake
    _upload_line: WaitingLine
    spool_dir: Path
    _receipts: ReceiptIssuer | None
    federation_id: str
    monitor: Monitor
    _hospital: Callable[[str, str | None], Hospital]

    def begin_update(
        self,
        session_id: str,
        round_number: int,
        num_examples: int,
        metrics: Mapping[str, float],
        layout: Layout,
        *,
        caller: str | None = None,
        privacy: PrivacyReport | None = None,
        delta: bool = False,
        signature: bytes = b"",
        certificate: x509.Certificate | None = None,
    ) -> PendingUpdate:
        """Check an upload's header and reserve its slot; use the result as a context manager.
        ``signature``: the hospital's over the update's digest; ``certificate``: the TLS connection's."""
        with self._cond:
            hospital = self._hospital(session_id, caller)
            current = self._round
            if current is None:
                raise Rejected(f"round {round_number} is not open: no round is open now")
            current.check_upload(hospital.name, round_number)
            settings = current.task.settings
            try:
                if isinstance(current.accumulator, SecureAccumulator):
                    check_secure_header(hospital.name, layout, current.accumulator.secure.setup.length, num_examples,
                                        hospital.num_examples, delta=delta)  # fmt: skip
                else:
                    check_header(
                        hospital.name, layout, current.task.payload.layout, settings.update_encoding, delta=delta,
                        num_examples=num_examples, joined_with=hospital.num_examples,
                    )  # fmt: skip
            except CoordinatorError as exc:
                current.refuse(RefusedUpdate(hospital.name, num_examples, str(exc)))
                raise
            current.receiving.add(hospital.name)
            self.monitor.uploading(hospital.name)
            contribution = Contribution(hospital.name, num_examples, dict(metrics), privacy, layout.total_bytes)
            return PendingUpdate(self, current, contribution, layout, signature, certificate)

    def submit_update(
        self,
        session_id: str,
        round_number: int,
        num_examples: int,
        metrics: Mapping[str, float],
        state: Mapping[str, np.ndarray],
        *,
        caller: str | None = None,
    ) -> Receipt | None:
        """``begin_update`` and ``commit`` in one step, for callers that hold the whole update already."""
        encoded = encode(state)
        digest = update_digest(self.federation_id, round_number, num_examples, encoded.layout, encoded.buffer,
                               delta=False)  # fmt: skip
        with self.begin_update(session_id, round_number, num_examples, metrics, encoded.layout, caller=caller) as up:
            return up.commit(encoded.tensors(), digest)

    def _fold(
        self,
        current: OpenRound,
        contribution: Contribution,
        state: Mapping[str, np.ndarray],
        decoded: DecodedUpdate,
    ) -> Receipt | None:
        """``state`` as received, ``decoded`` its full values: checked by server/admission.py, then folded."""
        with self._fold_lock:
            with self._cond:
                if self._round is not current:
                    raise Rejected(f"round {current.task.round} closed while the update was being received")
                if contribution.name not in current.selected:
                    raise PermissionDenied(f"{contribution.name} is no longer part of round {current.task.round}")
            try:
                self._check_and_add(current, contribution, state, decoded)
            except InvalidUpdate as exc:
                with self._cond:
                    current.refuse(RefusedUpdate(contribution.name, contribution.num_examples, str(exc),
                                                 contribution.proof))  # fmt: skip
                raise
            with self._cond:
                current.contributions[contribution.name] = contribution
                current.receiving.discard(contribution.name)
                self._cond.notify_all()
            epsilon = contribution.privacy.epsilon if contribution.privacy is not None else None
            self.monitor.reported(contribution.name, contribution.nbytes, contribution.metrics, epsilon)
        proof = contribution.proof
        if self._receipts is None or proof is None or proof.digest is None:
            return None
        return self._receipts.receipt(contribution.name, current.task.round, proof.digest, contribution.num_examples)

    def _check_and_add(
        self,
        current: OpenRound,
        contribution: Contribution,
        state: Mapping[str, np.ndarray],
        decoded: DecodedUpdate,
    ) -> None:
        """Caller holds the fold lock: refuse (InvalidUpdate) or fold the update into the round's sum."""
        if contribution.proof is not None:
            check_signature(contribution.name, contribution.proof)
        if isinstance(current.accumulator, SecureAccumulator):
            # Masked values look uniform: nothing to check in them. The sum is kept under the condition,
            # which the secure stages read.
            with self._cond:
                try:
                    current.accumulator.add_from(contribution.name, state, contribution.num_examples)
                except AggregationError as exc:
                    raise InvalidUpdate(str(exc)) from None
            return
        if (reason := refusal(state, decoded, current.task.payload.tensors())) is not None:
            raise InvalidUpdate(reason)
        try:
            current.accumulator.add(decoded, contribution.num_examples)
        except AggregationError as exc:
            raise InvalidUpdate(str(exc)) from None

    def _receive_slot(self, current: OpenRound, nbytes: int) -> Admission:
        """Wait in line until the intake admits the upload (server/intake.py); refuse if the round closes
        meanwhile (nothing read in vain). Only the first in line asks the intake (``WaitingLine``)."""
        place = object()
        with self._cond:
            self._upload_line.join(place)
            try:
                while True:
                    if self._round is not current:
                        raise Rejected(f"round {current.task.round} closed while the update waited to be received")
                    if not self._upload_line.first(place):
                        self._cond.wait()
                    elif (admission := self.intake.admit(nbytes)) is not None:
                        return admission
                    else:
                        self._cond.wait(self.intake.retry_in())
            finally:
                self._upload_line.leave(place, self._cond)

    def _release(self, current: OpenRound, name: str, admission: Admission | None) -> None:
        """``admission``: the upload's, None when it was never admitted."""
        self.monitor.upload_ended(name)
        with self._cond:
            current.receiving.discard(name)
            if admission is not None:
                self.intake.release(admission)
            self._cond.notify_all()
