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

from medfed.client.privacy import HospitalPrivacy
from medfed.client.protocol import Connection, CoordinatorAway, JoinInfo, NodeError, Session, SessionLost, Submitted
from medfed.client.trainer import LocalResult, Trainer
from medfed.common import __version__
from medfed.common.compression import encode_update
from medfed.common.data.folders import HospitalData
from medfed.common.messages import FinishedNotice, ReceivedTask, UpdateHeader
from medfed.common.peer_text import cleaned
from medfed.common.retry import Backoff

log = logging.getLogger("medfed.client")

MAX_REJOINS = 3
HEARTBEAT_INTERVAL_S = 15.0


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
    ) -> None:
        self._connection, self._data, self._trainer = connection, data, trainer
        self._name, self._max_wait = name, max_wait
        self._sleep, self._clock = sleep, clock
        self._privacy = privacy
        self._heartbeat_interval = heartbeat_interval
        self._stop = threading.Event()
        self._session: Session | None = None
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
        federation = self._session.federation if self._session is not None else ""
        result = self._trainer.run(header.round, header.settings, header.model, task.state, planned,
                                   federation=federation)  # fmt: skip
        if self._privacy is not None and planned is not None and self._session is not None:
            # spent before the update leaves
            result = replace(result, privacy=self._privacy.record(self._session.federation, header.round, planned))
        self._log_round(task, result)
        self._submit(task, result)
        return header.round

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
        if retry:
            log.info("joined the federation as %s (%d training images)", self._name, len(train))
        else:
            log.info("joined the federation again as %s", self._name)

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
        try:
            outcome = self._connection.submit(header, encoded)
        except SessionLost as exc:
            self._rejoin(exc)
            return
        if outcome.kind is Submitted.ALREADY_HAD:
            log.info("round %d: the coordinator already had this update", round_number)
        elif outcome.kind is Submitted.DISCARDED:
            log.warning("round %d: update discarded by the coordinator: %s", round_number, outcome.detail)

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
