"""What the coordinator writes about privacy: per round in history.jsonl, once in model.json.

Central DP is accounted here (the coordinator runs it); hospitals' local DP and DP-SGD are accounted
by each hospital against its own ledger and only recorded here, as they reported it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from medfed.common.dp.accounting import epsilon, finite_or_none
from medfed.common.messages import PrivacyReport, report_from_json, report_to_json
from medfed.server.history import RoundRecord
from medfed.server.rounds import Contribution
from medfed.server.strategy import CentralRound
from medfed.server.strategy.central_dp import DpFedAvg


class PrivacyRecorder:
    def __init__(self, central: DpFedAvg | None, delta: float) -> None:
        self._central = central
        self.delta = delta
        self._rounds = 0
        self._hospitals: dict[str, PrivacyReport] = {}
        self._hospital_rounds: dict[str, int] = {}
        self._central_record: dict[str, Any] | None = None

    def round(
        self, central: CentralRound | None, contributions: Iterable[Contribution]
    ) -> tuple[dict[str, Any] | None, float | None]:
        """This round's ``privacy`` for the history and the largest ε in use (None, None without DP).
        ``central``: what central DP released this round (its accumulator's ``central``)."""
        out: dict[str, Any] = {}
        worst: float | None = None
        if self._central is not None and central is not None:
            self._rounds += 1
            spent = epsilon([self._central.spend().model_copy(update={"steps": self._rounds})], self.delta)
            record: dict[str, Any] = {
                **self._central.describe(central.clip),
                "rounds": self._rounds,
                "sampling_rate": 1.0,
                "epsilon": finite_or_none(spent),
                "delta": self.delta,
            }
            if central.unclipped_fraction is not None:
                record["unclipped_fraction"] = central.unclipped_fraction
                record["next_clip"] = central.next_clip
            self._central_record = record
            out["central"] = record
            worst = spent
        reports = {c.name: c.privacy for c in contributions if c.privacy is not None}
        if reports:
            self._hospitals.update(reports)
            for name in reports:
                self._hospital_rounds[name] = self._hospital_rounds.get(name, 0) + 1
            out["hospitals"] = {name: report_to_json(r) for name, r in sorted(reports.items())}
            highest = max(r.epsilon for r in reports.values())
            worst = highest if worst is None else max(worst, highest)
        if not out:
            return None, None
        return out, finite_or_none(worst) if worst is not None else None

    def state(self) -> dict[str, Any]:
        """For the coordinator's checkpoint: what a resumed run needs to keep accounting."""
        return {
            "central_rounds": self._rounds,
            "central_record": self._central_record,
            "hospitals": {name: report_to_json(r) for name, r in self._hospitals.items()},
            "hospital_rounds": self._hospital_rounds,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._rounds = int(state.get("central_rounds", 0))
        self._central_record = state.get("central_record")
        self._hospitals = {name: report_from_json(r) for name, r in state.get("hospitals", {}).items()}
        self._hospital_rounds = {name: int(n) for name, n in state.get("hospital_rounds", {}).items()}

    def summary(self) -> dict[str, Any]:
        """For model.json: every mechanism that touched the model, with its final (ε, δ)."""
        if self._central_record is None and not self._hospitals:
            return {"mechanism": "none"}
        out: dict[str, Any] = {}
        if self._central_record is not None:
            out["central"] = self._central_record
        if self._hospitals:
            out["hospitals"] = {
                name: {**report_to_json(r), "rounds": self._hospital_rounds[name]}
                for name, r in sorted(self._hospitals.items())
            }
        return out

    @staticmethod
    def describe(record: RoundRecord) -> str:
        """The round's log line addition."""
        if record.privacy is None:
            return ""
        value = record.epsilon
        return f", ε = {value:.3g}" if value is not None and math.isfinite(value) else ", ε = ∞ (no noise)"
