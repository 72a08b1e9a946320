"""Secure aggregation's stages, for the coordinator (server/coordinator.py mixes this in): a hospital's
part of a stage and the next stage's input for it, once the driver closes the stage
(server/secure_rounds.py); the round's own logic is in server/secure_aggregation.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from medfed.common.errors import SecureAggregationError
from medfed.server.errors import InvalidUpdate, PermissionDenied, Rejected
from medfed.server.membership import Hospital, Membership
from medfed.server.rounds import Finished, OpenRound
from medfed.server.secure_aggregation import SecureAccumulator, SecureRound

T = TypeVar("T")


class SecureStages:
    """What the stages share with the rest of the coordinator is declared here."""

    _cond: threading.Condition
    _round: OpenRound | None
    _finished: Finished | None
    _members: Membership
    _clock: Callable[[], float]
    _hospital: Callable[[str, str | None], Hospital]

    def joined_examples(self, name: str) -> int:
        """The training-set size ``name`` declared at join (its weight in a secure round)."""
        with self._cond:
            return self._members.hospitals[name].num_examples

    def secure_stage(
        self,
        session_id: str,
        round_number: int,
        stage: int,
        send: Callable[[SecureRound, str], None],
        answer: Callable[[SecureRound, str], T],
        *,
        caller: str | None = None,
        timeout: float,
    ) -> T:
        """A hospital's part of ``stage`` (``send``), then, once the driver closes the stage, the next
        stage's input for it (``answer``)."""
        deadline = self._clock() + timeout
        with self._cond:
            hospital = self._hospital(session_id, caller)
            current = self._round
            if current is None or current.task.round != round_number:
                raise Rejected(f"round {round_number} is not open")
            accumulator = current.accumulator
            if not isinstance(accumulator, SecureAccumulator):
                raise Rejected(f"round {round_number} is not securely aggregated")
            if hospital.name not in current.selected:
                raise PermissionDenied(f"{hospital.name} was not chosen for round {round_number}")
            try:
                send(accumulator.secure, hospital.name)
            except SecureAggregationError as exc:
                raise InvalidUpdate(str(exc)) from None
            self._cond.notify_all()
            last = stage >= 5  # a reveal is the hospital's last word: nothing to wait for
            while not last and accumulator.secure.stage <= stage and self._round is current and not accumulator.failed:
                if self._finished is not None:
                    raise Rejected(f"the federation is over ({self._finished.reason})")
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise Rejected(f"round {round_number}'s secure stage {stage} did not close in {timeout:.0f} s")
                self._cond.wait(remaining)
            if self._round is not current or accumulator.failed is not None:
                raise Rejected(f"round {round_number} ended: {accumulator.failed or 'it closed'}")
            try:
                return answer(accumulator.secure, hospital.name)
            except SecureAggregationError as exc:
                raise Rejected(str(exc)) from None

    def secure_wait(self, stage: int, deadline: float) -> set[str]:
        """The driver: wait until everyone ``stage`` waits for answered, or the deadline; who is missing."""
        with self._cond:
            secure = self._open_secure().secure
            while self._finished is None:
                pending = secure.pending(stage)
                remaining = deadline - self._clock()
                if not pending or remaining <= 0:
                    return pending
                self._cond.wait(remaining)
            return secure.pending(stage)

    def secure_advance(self, stage: int) -> str | None:
        """The driver: close ``stage``; returns why the round fails (too few hospitals left), or None."""
        with self._cond:
            accumulator = self._open_secure()
            try:
                accumulator.secure.advance(stage)
            except SecureAggregationError as exc:
                accumulator.failed = str(exc)
            self._cond.notify_all()
            return accumulator.failed

    def _open_secure(self) -> SecureAccumulator:
        """Caller holds the condition: the open round's secure accumulator (the driver's own calls)."""
        current = self._round
        if current is None or not isinstance(current.accumulator, SecureAccumulator):
            raise RuntimeError("no secure round is open")
        return current.accumulator
