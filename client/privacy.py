"""A hospital's privacy: which mechanism a round uses, the budget it may spend, and its ledger.

The hospital decides: its own flags win over a coordinator's request unless the request asks for
more noise with the same mechanism. Every release is written to a ledger file *before* the update
leaves, and the budget is counted from that file, so restarting fed-client or joining another
federation with the same data keeps counting instead of starting again from ε = 0.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from medfed.common import files
from medfed.common.dp.accounting import Spend, epsilon
from medfed.common.dp.mechanisms import DpSettings
from medfed.common.errors import ConfigError, MedfedError
from medfed.common.messages import PrivacyReport, TrainSettings
from medfed.common.ml.dp_sgd import plan_dp_sgd

log = logging.getLogger("medfed.client")

LEDGER_FORMAT = "medfed-privacy-ledger/1"
LEDGER_FILE = "privacy-ledger.json"


class BudgetExhausted(MedfedError):
    """Taking part in the next round would spend more than --dp-target-epsilon."""


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: str
    federation: str
    round: int
    clip: float
    spend: Spend


class LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    entries: list[LedgerEntry]


class PrivacyLedger:
    """Every DP release this hospital's data has paid for, in a JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[LedgerEntry] = []
        if path.exists():
            try:
                parsed = LedgerFile.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                raise ConfigError(
                    f"--dp-ledger: {path} is not a readable privacy ledger ({str(exc).splitlines()[0]}); "
                    "it records the privacy this data has already spent, so it is never replaced silently"
                ) from None
            if parsed.format != LEDGER_FORMAT:
                raise ConfigError(f"--dp-ledger: {path} has format {parsed.format!r}, expected {LEDGER_FORMAT!r}")
            self.entries = parsed.entries
        elif not os.access(path.parent if path.parent.exists() else Path.cwd(), os.W_OK):
            raise ConfigError(f"--dp-ledger: cannot write {path} (its folder is missing or read-only)")

    @property
    def spends(self) -> list[Spend]:
        return [e.spend for e in self.entries]

    def record(self, federation: str, round_number: int, clip: float, spend: Spend) -> None:
        entry = LedgerEntry(
            time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            federation=federation,
            round=round_number,
            clip=clip,
            spend=spend,
        )
        data = LedgerFile(format=LEDGER_FORMAT, entries=[*self.entries, entry]).model_dump(mode="json")
        files.write_json(self.path, data, durable=True, indent=1)
        self.entries.append(entry)


@dataclass(frozen=True)
class RoundPrivacy:
    """What one round will do to the hospital's data: the mechanism and what it will spend."""

    settings: DpSettings
    spend: Spend


class HospitalPrivacy:
    def __init__(
        self,
        own: DpSettings | None,
        *,
        num_examples: int,
        delta: float,
        target_epsilon: float | None,
        ledger_path: Path,
    ) -> None:
        self.own, self.delta, self.target = own, delta, target_epsilon
        self.num_examples = num_examples
        self._ledger_path = ledger_path
        self._ledger: PrivacyLedger | None = None
        self._announced: DpSettings | None = None

    @property
    def ledger(self) -> PrivacyLedger:
        """Opened on first use: a hospital without DP never needs the file (its folder may be read-only)."""
        if self._ledger is None:
            self._ledger = PrivacyLedger(self._ledger_path)
        return self._ledger

    @property
    def spent(self) -> float:
        return epsilon(self.ledger.spends, self.delta)

    def check_start(self) -> None:
        """With DP flags: open the ledger now (a bad one is a start-up error) and refuse a spent budget."""
        if self.own is None:
            return
        if self.ledger.entries:
            log.info(
                "privacy ledger %s: %d earlier release(s), ε = %.3g at δ = %.2g",
                self.ledger.path,
                len(self.ledger.entries),
                self.spent,
                self.delta,
            )
        if self.target is not None and self.ledger.entries and self.spent >= self.target:
            raise BudgetExhausted(
                f"this data has already spent ε = {self.spent:.3g} (δ = {self.delta:.2g}) of --dp-target-epsilon "
                f"{self.target:g} according to {self.ledger.path}; not joining"
            )

    def choose(self, request: DpSettings | None) -> DpSettings | None:
        """The hospital's flags win, unless the coordinator asks for more noise with the same mechanism."""
        chosen, declined = self.own, None
        if request is not None:
            if self.own is None or (
                self.own.mechanism == request.mechanism and request.noise_multiplier > self.own.noise_multiplier
            ):
                chosen = request
            elif request != self.own:
                declined = request
        if chosen is not None and chosen != self._announced:
            source = "this hospital's flags" if chosen == self.own else "the coordinator's request"
            text = f"privacy: {chosen.describe()} (from {source})"
            if declined is not None:
                text += f"; not applying the coordinator's request for {declined.describe()}"
            log.info("%s", text)
            self._announced = chosen
        return chosen

    def plan(self, request: DpSettings | None, settings: TrainSettings) -> RoundPrivacy | None:
        """The round's mechanism and spend; raises BudgetExhausted when it would pass the target."""
        chosen = self.choose(request)
        if chosen is None or settings.local_epochs == 0:
            return None  # no training: the update does not depend on the data, and nothing is spent
        if chosen.mechanism == "dp_sgd":
            steps = plan_dp_sgd(self.num_examples, settings.batch_size, settings.local_epochs)
            spend = Spend(
                mechanism="dp_sgd",
                noise_multiplier=chosen.noise_multiplier,
                sampling_rate=steps.sampling_rate,
                steps=steps.steps,
            )
        else:
            spend = Spend(mechanism="local", noise_multiplier=chosen.noise_multiplier)
        if self.target is not None:
            after = epsilon([*self.ledger.spends, spend], self.delta)
            if after > self.target:
                raise BudgetExhausted(
                    f"taking part in this round would raise ε from {self.spent:.3g} to {after:.3g} (δ = "
                    f"{self.delta:.2g}), above --dp-target-epsilon {self.target:g}; leaving the federation"
                )
        return RoundPrivacy(chosen, spend)

    def epsilon_after(self, planned: RoundPrivacy) -> float:
        """This data's total ε once ``planned`` is spent (what a policy's max_epsilon is checked against)."""
        return epsilon([*self.ledger.spends, planned.spend], self.delta)

    def record(self, federation: str, round_number: int, planned: RoundPrivacy) -> PrivacyReport:
        """Write the spend to the ledger (before the update leaves) and describe the total for the coordinator."""
        self.ledger.record(federation, round_number, planned.settings.clip, planned.spend)
        spends = self.ledger.spends
        return PrivacyReport(
            mechanism="dp_sgd" if planned.settings.mechanism == "dp_sgd" else "local",
            clip=planned.settings.clip,
            noise_multiplier=planned.settings.noise_multiplier,
            sampling_rate=planned.spend.sampling_rate,
            steps=planned.spend.steps,
            releases=len(spends),
            epsilon=epsilon(spends, self.delta),
            delta=self.delta,
        )
