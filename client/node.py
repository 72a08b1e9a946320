"""A hospital's loop: join, poll for tasks, train, send the update back, until the federation ends.

It runs over a ``Connection`` (client/protocol.py) and has no gRPC in it: the connection retries an
unreachable coordinator and turns every answer into an outcome; the loop decides what each means for
this hospital (join again after a lost session, wait for a coordinator that stopped to come back,
stop with a reason). The privacy decisions stay here: what the hospital tells about its data, and
that a release is written to its ledger before the update leaves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from medfed.client.identity import Identity
from medfed.client.local_state import STATE_FOLDER
from medfed.client.policy import HospitalPolicy
from medfed.client.privacy import HospitalPrivacy
from medfed.client.protocol import (
    Connection,
    CoordinatorAway,
    JoinInfo,
    NodeError,
    RoundAbandoned,
    Session,
    SessionLost,
    SubmitOutcome,
    Submitted,
)
from medfed.client.receipts import Provenance
from medfed.client.secure_aggregation import HospitalRound
from medfed.client.trainer import LocalResult, TaskError, Trainer
from medfed.common import __version__
from medfed.common.compression import encode_update
from medfed.common.data.folders import HospitalData
from medfed.common.errors import SecureAggregationError
from medfed.common.messages import FinishedNotice, ReceivedTask, UpdateHeader
from medfed.common.peer_text import cleaned
from medfed.common.retry import Backoff
from medfed.common.secagg import vector
from medfed.common.secagg.messages import ShareBundle
from medfed.common.tensors import EncodedModel, encode

log = logging.getLogger("medfed.client")

MAX_REJOINS = 3
HEARTBEAT_INTERVAL_S = 15.0
STAY_RETRY_S = 30.0
"""with --stay, the longest wait between attempts to join the next federation"""


class PolicyRefusal(NodeError):
    """A task broke the hospital's policy file: the node leaves that federation."""


class HospitalNode:
    def __init__(
        self,
        connection: Connection,
        data: HospitalData,
        trainer: Trainer,
        *,
        name: str,
        max_wait: float,
        privacy: HospitalPrivacy | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        policy: HospitalPolicy | None = None,
        stay: bool = False,
        identity: Identity | None = None,
        provenance: Provenance | None = None,
    ) -> None:
        """``stay``: after a federation ends (or this node leaves it), wait for the coordinator's next one
        instead of returning; ``policy``: the rules every task is checked against before training;
        ``provenance``: what signs each update and keeps the coordinator's receipts (by default, with
        ``identity``, in the data folder's medfed-state/)."""
        self._connection, self._data, self._trainer = connection, data, trainer
        self._name, self._max_wait = name, max_wait
        self._sleep, self._clock = sleep, clock
        self._privacy = privacy
        self._heartbeat_interval = heartbeat_interval
        self._stop = threading.Event()
        self._session: Session | None = None
        self._rejoins = 0  # in a row, without a task in between
        self._policy, self._stay = policy, stay
        self._identity = identity
        """the TLS files a secure round's keys are signed with and checked against"""
        self._provenance = provenance or (Provenance(identity, name, data.path / STATE_FOLDER) if identity else None)
        """signs each update (a coordinator under TLS refuses unsigned ones) and keeps the receipts"""
        self._refused: set[str] = set()
        """federations this node left (a broken policy, a task it cannot do): with --stay, not joined again"""

    def run(self) -> int:
        """Take part until the coordinator says the federation is over (with --stay: in every federation
        it starts, until stopped); returns the rounds trained."""
        beats = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beats.start()
        trained = 0
        try:
            while True:
                try:
                    if self._session is None:
                        self._join()
                    trained += self._take_part()
                    if not self._stay:
                        return trained
                    log.info("waiting for the coordinator's next federation (--stay)")
                except (NodeError, TaskError) as exc:
                    if not self._stay:
                        raise
                    self._give_up_federation(exc)
                self._session = None
                self._await_next()
        finally:
            self._stop.set()
            beats.join(timeout=5)

    def _give_up_federation(self, exc: NodeError | TaskError) -> None:
        """--stay: leave this federation for good (told why) and wait for another."""
        session = self._session
        if session is not None:
            self._refused.add(session.federation)
            self._connection.leave(session, cleaned(str(exc)))
        log.warning("%s; leaving this federation and waiting for the next one (--stay)", exc)

    def _await_next(self) -> None:
        """--stay: join the coordinator's next federation, however long it takes to start; one this node
        left is not joined again."""
        backoff = Backoff(maximum=STAY_RETRY_S)
        said: set[str] = set()
        while True:
            try:
                self._join(retry=False)
            except CoordinatorAway:
                pass
            except NodeError as exc:
                if (text := str(exc)) not in said:  # once each: a refusal that lasts is not worth a line a minute
                    said.add(text)
                    log.warning("%s; trying again every %.0f s (--stay)", text, STAY_RETRY_S)
            else:
                session = self._session
                assert session is not None
                if session.federation not in self._refused:
                    self._rejoins = 0
                    return
                self._connection.leave(session, "this hospital left this federation earlier")
                self._session = None
            self._sleep(backoff.next_delay())

    def leave(self, reason: str) -> None:
        if self._session is not None:
            self._connection.leave(self._session, reason)

    def _heartbeats(self) -> None:
        """A sign of life every HEARTBEAT_INTERVAL_S while this hospital downloads, trains or uploads."""
        while not self._stop.wait(self._heartbeat_interval):
            if (session := self._session) is not None:
                self._connection.heartbeat(session)

    def _take_part(self) -> int:
        """Returns the number of distinct rounds trained (a round run again after a coordinator restart
        counts once)."""
        trained: list[int] = []
        while True:
            message = self._poll()
            if isinstance(message, FinishedNotice) and message.resumable:
                self._await_return(cleaned(message.reason))
                continue
            if isinstance(message, FinishedNotice):
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
            trained.append(self._work(message))

    def _work(self, task: ReceivedTask) -> int:
        """Train on one task and send the update; returns the round."""
        header = task.header
        planned = self._privacy.plan(header.settings.local_dp, header.settings) if self._privacy else None
        if self._policy is not None:
            epsilon_after = self._privacy.epsilon_after(planned) if self._privacy and planned else None
            rule = self._policy.broken_by(model=header.model, settings=header.settings,
                                          total_rounds=header.total_rounds, private=planned is not None,
                                          epsilon_after=epsilon_after)  # fmt: skip
            if rule is not None:
                raise PolicyRefusal(f"refused round {header.round}'s task: it breaks the policy ({rule})")
        federation = self._session.federation if self._session is not None else ""
        secure = None
        if header.settings.secure_aggregation is not None:
            try:
                secure = self._secure_start(task)  # keys and shares first: dropping while training is recoverable
            except (RoundAbandoned, SecureAggregationError) as exc:
                log.warning("round %d: secure aggregation stopped (%s); this hospital skips the round", header.round,
                            cleaned(str(exc)))  # fmt: skip
                return header.round
        result = self._trainer.run(header.round, header.settings, header.model, task.state, planned,
                                   federation=federation)  # fmt: skip
        if self._privacy is not None and planned is not None and self._session is not None:
            # spent before the update leaves
            result = replace(result, privacy=self._privacy.record(self._session.federation, header.round, planned))
        self._log_round(task, result)
        if secure is None:
            self._submit(task, result)
        else:
            try:
                self._secure_finish(task, result, *secure)
            except (RoundAbandoned, SecureAggregationError) as exc:
                log.warning("round %d: secure aggregation stopped (%s)", header.round, cleaned(str(exc)))
        return header.round

    def _secure_start(self, task: ReceivedTask) -> tuple[HospitalRound, list[ShareBundle]]:
        """Secure aggregation's stages 1 and 2: signed keys out, peers' keys checked, shares sealed."""
        header, session = task.header, self._session
        parameters = header.settings.secure_aggregation
        assert parameters is not None and session is not None
        if self._identity is None:
            raise TaskError(
                "the round is securely aggregated and this hospital runs without TLS: it has no certificate to "
                "sign its round keys with"
            )
        party = HospitalRound(self._name, parameters.for_round(session.federation, header.round),
                              ca=self._identity.ca, signing_key=self._identity.signing_key,
                              certificate=self._identity.certificate)  # fmt: skip
        relayed = self._connection.secure_keys(session, header.round, party.advertise())
        mine = self._connection.secure_shares(session, header.round, party.share(relayed))
        return party, mine

    def _secure_finish(self, task: ReceivedTask, result: LocalResult, party: HospitalRound,
                       mine: list[ShareBundle]) -> None:  # fmt: skip
        """Stages 3 and 4: the masked difference up, then the confirmation and the shares to unmask."""
        session, round_number, setup = self._session, task.header.round, party.setup
        assert session is not None
        term = setup.fixed_point.encode(vector.difference(result.state, task.state), setup.weight(self._name))
        encoded = encode(vector.as_update(party.mask(mine, term)))
        declared = len(self._data.split("train"))
        header = UpdateHeader(session.id, round_number, declared, result.metrics, encoded.layout, result.privacy)
        header, digest = self._signed(header, encoded)
        outcome = self._connection.submit(header, encoded)
        if outcome.kind is Submitted.DISCARDED:
            log.warning("round %d: masked update discarded by the coordinator: %s", round_number, outcome.detail)
            return
        self._keep(task, header, digest, outcome)
        request = self._connection.secure_await_unmask(session, round_number)
        confirmations = self._connection.secure_confirm(session, round_number, party.confirm(request))
        self._connection.secure_reveal(session, round_number, party.reveal(request, confirmations))
        log.info("round %d: securely aggregated with %d other hospital(s)", round_number, len(request.survivors) - 1)

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
                self._join(retry=False)
                return
            except CoordinatorAway:
                pass
            now = self._clock()
            if now >= deadline:
                raise NodeError(
                    f"the coordinator stopped ({reason}) and did not come back within {self._max_wait:.0f} s"
                )
            self._sleep(min(backoff.next_delay(), deadline - now))

    def _join(self, *, retry: bool = True) -> None:
        train = self._data.split("train")
        says_nothing = self._privacy is not None and self._privacy.own is not None  # its own DP: no data metrics
        classes = () if says_nothing else tuple(np.flatnonzero(np.bincount(train.labels)).tolist())
        hospital = JoinInfo(self._name, len(train), self._data.info, classes, __version__)
        self._session = self._connection.join(hospital, retry=retry)
        federation = self._session.federation
        if retry:
            log.info("joined federation %s as %s (%d training images)", cleaned(federation), self._name, len(train))
        else:
            log.info("joined federation %s as %s", cleaned(federation), self._name)

    def _poll(self) -> ReceivedTask | FinishedNotice | None:
        assert self._session is not None
        try:
            return self._connection.next_task(self._session)
        except SessionLost as exc:
            self._rejoin(exc)
            return None

    def _rejoin(self, lost: SessionLost) -> None:
        if self._rejoins >= MAX_REJOINS:
            raise NodeError(f"the coordinator ended this hospital's session: {lost}")
        log.warning("the coordinator no longer knows this hospital (%s); joining again", lost)
        self._rejoins += 1
        self._join()

    def _submit(self, task: ReceivedTask, result: LocalResult) -> None:
        assert self._session is not None
        round_number, encoding = task.header.round, task.header.settings.update_encoding
        encoded = encode_update(result.state, task.state, encoding)
        header = UpdateHeader(
            self._session.id, round_number, result.num_examples, result.metrics, encoded.layout, result.privacy,
            delta=encoding == "int8",
        )  # fmt: skip
        header, digest = self._signed(header, encoded)
        try:
            outcome = self._connection.submit(header, encoded)
        except SessionLost as exc:
            self._rejoin(exc)
            return
        self._keep(task, header, digest, outcome)
        if outcome.kind is Submitted.ALREADY_HAD:
            log.info("round %d: the coordinator already had this update", round_number)
        elif outcome.kind is Submitted.DISCARDED:
            log.warning("round %d: update discarded by the coordinator: %s", round_number, outcome.detail)

    def _signed(self, header: UpdateHeader, encoded: EncodedModel) -> tuple[UpdateHeader, bytes | None]:
        """The header with this hospital's signature over the update (under TLS), and the update's digest."""
        if self._provenance is None or self._session is None:
            return header, None
        return self._provenance.sign(self._session.federation, header, encoded)

    def _keep(self, task: ReceivedTask, header: UpdateHeader, digest: bytes | None, outcome: SubmitOutcome) -> None:
        if (
            self._provenance is not None
            and self._session is not None
            and digest is not None
            and (outcome.kind is Submitted.ACCEPTED)
        ):
            self._provenance.keep(self._session.federation, task, header, digest, outcome.receipt)

    def _log_round(self, task: ReceivedTask, result: LocalResult) -> None:
        header = task.header
        m = result.local_metrics
        if not m:
            log.info("round %d/%d: no local training asked for; returning the model", header.round, header.total_rounds)
            return
        text = f"train loss {m['train_loss']:.4f}, accuracy {m['train_accuracy']:.4f}"
        if "val_accuracy" in m:
            text += f"; validation accuracy {m['val_accuracy']:.4f}"
        if (p := result.privacy) is not None:
            text += f"; privacy spent ε = {p.epsilon:.3g} at δ = {p.delta:.2g} after {p.releases} release(s)"
        log.info(
            "round %d/%d: %d epoch(s) on %d images in %.1f s: %s",
            header.round,
            header.total_rounds,
            header.settings.local_epochs,
            result.num_examples,
            m["train_seconds"],
            text,
        )
