"""Privacy accounting: what each release spends, added up by Google's dp-accounting (RDP accountant).

No formula for ε is written here: every release becomes a dp-accounting event and the library's
Rényi-DP accountant composes them. What we decide, and state, is which event each mechanism is:

- ``local``: a hospital releases clip_C(Δ) + N(0, (σC)²). One patient more or less can move the
  clipped update anywhere in the ball of radius C, so two releases differ by up to 2C: a Gaussian
  mechanism with noise multiplier σ/2, once per round, without sampling.
- ``dp_sgd``: every optimizer step is a Poisson-sampled Gaussian mechanism (rate q = batch / n,
  multiplier σ) over one patient's clipped gradient, as Opacus trains it.
- ``central``: the coordinator adds N(0, (σC)²) to the sum of clipped hospital updates; one hospital
  more or less moves the sum by at most C: a Gaussian mechanism with multiplier σ per round (every
  hospital takes part in every round, so no amplification by sampling is claimed). Adaptive
  clipping adds a second Gaussian release (the noisy count of unclipped updates) composed with it.

Neighbouring datasets differ in one patient for the hospital-side mechanisms and in one hospital's
whole data for central DP; δ is per patient or per hospital accordingly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from medfed.common.dp.mechanisms import Mechanism

if TYPE_CHECKING:
    import dp_accounting as dpa

DEFAULT_MAX_DELTA = 1e-5

# The RDP accountant logs a warning for each fractional order it cannot evaluate and leaves that order
# out of the minimum it takes; that only makes ε slightly less tight, never wrong.
logging.getLogger("absl").setLevel(logging.ERROR)


def default_delta(num_records: int) -> float:
    """δ = min(1e-5, 1/(10 n)): well below 1/n, the chance of a total breach of one of n records."""
    return min(DEFAULT_MAX_DELTA, 1.0 / (10 * max(num_records, 1)))


class Spend(BaseModel):
    """One release, as the accountant needs it and as a privacy ledger stores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mechanism: Mechanism
    noise_multiplier: float = Field(ge=0, allow_inf_nan=False)
    """σ as configured (noise std = σC)"""
    sampling_rate: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    steps: int = Field(1, ge=1)
    count_noise_multiplier: float | None = Field(None, gt=0, allow_inf_nan=False)
    """adaptive clipping only: the multiplier of the noisy count of unclipped updates"""

    def event(self) -> dpa.DpEvent:
        import dp_accounting as dpa  # with scipy about 100 MB: loaded only by runs that use DP

        if self.mechanism == "local":
            single: dpa.DpEvent = dpa.GaussianDpEvent(self.noise_multiplier / 2)
        elif self.mechanism == "dp_sgd":
            single = dpa.PoissonSampledDpEvent(self.sampling_rate, dpa.GaussianDpEvent(self.noise_multiplier))
        elif self.count_noise_multiplier is None:
            single = dpa.GaussianDpEvent(self.noise_multiplier)
        else:
            single = dpa.ComposedDpEvent(
                [dpa.GaussianDpEvent(self.noise_multiplier), dpa.GaussianDpEvent(self.count_noise_multiplier)]
            )
        return single if self.steps == 1 else dpa.SelfComposedDpEvent(single, self.steps)


def epsilon(spends: Iterable[Spend], delta: float) -> float:
    """ε at ``delta`` after all ``spends``: 0 for none, inf when one of them adds no noise."""
    if not 0 < delta < 1:
        raise ValueError(f"δ must lie strictly between 0 and 1, got {delta}")
    spends = list(spends)
    if not spends:
        return 0.0
    if any(s.noise_multiplier == 0 for s in spends):
        return math.inf
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for spend in spends:
        accountant.compose(spend.event())
    return float(accountant.get_epsilon(delta))


def rounds_within(spend: Spend, delta: float, target: float, limit: int) -> int:
    """How many identical rounds of ``spend`` stay within ε ≤ target (at most ``limit``)."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        if epsilon([spend.model_copy(update={"steps": spend.steps * mid})], delta) <= target:
            low = mid
        else:
            high = mid - 1
    return low


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an ε without noise is written as null."""
    return value if math.isfinite(value) else None
