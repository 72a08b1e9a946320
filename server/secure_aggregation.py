"""The coordinator's side of a secure-aggregation round: it relays, folds and finally unmasks, and at no
point holds anything that shows one hospital's update.

Each stage takes what hospitals send until the driver moves on (a deadline, or everyone answered);
who answered decides the next stage: the hospitals that advertised keys (U1) get each other's keys,
those that shared (U2) get their bundles, those whose masked vector arrived (U3) are the survivors.
Masked vectors are folded into one uint32 sum as they arrive, so memory is one vector whatever N. The
result rebuilds each survivor's self-mask seed and each dropped hospital's mask key from at least the
threshold of shares, removes the masks, and rescales by the survivors' weights. Every refusal is a
SecureAggregationError naming the hospital and what was wrong; below the threshold the round fails
and nothing is rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from medfed.common.errors import SecureAggregationError
from medfed.common.secagg import keys, masking, shamir, vector
from medfed.common.secagg.messages import Reveal, Setup, ShareBundle, UnmaskRequest
from medfed.common.tensors import StateDict
from medfed.server.strategy import AggregationError, Stateless


class SecureRound:
    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self._keys: dict[str, keys.PublicKeys] = {}
        self._bundles: dict[str, list[ShareBundle]] = {}
        """sender -> its bundles (U2 is the senders)"""
        self._inbox: dict[str, list[ShareBundle]] | None = None
        """recipient -> the bundles addressed to it, sorted once stage 2 closes"""
        self._sum = np.zeros(setup.length, dtype=np.uint32)
        self._masked: set[str] = set()
        self._request: UnmaskRequest | None = None
        self._signatures: dict[str, bytes] = {}
        self._reveals: dict[str, Reveal] = {}
        self._stage = 1
        """1 keys, 2 shares, 3 masked vectors, 4 unmasking: a stage's input is frozen once the next begins"""

    def _at(self, stage: int, what: str) -> None:
        if self._stage > stage:
            raise SecureAggregationError(f"{what} arrived after its stage closed")
        self._stage = stage

    # ----- stage 1: keys -------------------------------------------------------------------------

    def take_keys(self, advertised: keys.PublicKeys) -> None:
        self._at(1, f"{advertised.hospital}'s keys")
        self._check_hospital(advertised.hospital, "keys")
        if self._keys.get(advertised.hospital) == advertised:
            return  # a retried call
        if advertised.hospital in self._keys:
            raise SecureAggregationError(f"{advertised.hospital} already sent its keys for this round")
        self._keys[advertised.hospital] = advertised

    def relayed_keys(self) -> list[keys.PublicKeys]:
        """Stage 2's input: every advertised key set (each hospital checks its neighbours')."""
        self._enough(len(self._keys), "advertised keys")
        self._stage = max(self._stage, 2)
        return [self._keys[n] for n in sorted(self._keys)]

    # ----- stage 2: shares -----------------------------------------------------------------------

    def take_shares(self, sender: str, bundles: Iterable[ShareBundle]) -> None:
        self._at(2, f"{sender}'s shares")
        if sender not in self._keys:
            raise SecureAggregationError(f"{sender} sent shares without keys")
        kept = list(bundles)
        if self._bundles.get(sender) == kept:
            return  # a retried call
        if sender in self._bundles:
            raise SecureAggregationError(f"{sender} already sent its shares for this round")
        allowed = self.setup.neighbours(sender) & self._keys.keys()
        for bundle in kept:
            if bundle.sender != sender or bundle.recipient not in allowed:
                raise SecureAggregationError(f"{sender} sent a share bundle for {bundle.recipient}, not a neighbour")
        if len({b.recipient for b in kept}) != len(kept):
            raise SecureAggregationError(f"{sender} sent two bundles for one hospital")
        self._bundles[sender] = kept

    def bundles_for(self, recipient: str) -> list[ShareBundle]:
        """Stage 3's input for one hospital: the bundles addressed to it."""
        if self._inbox is None:
            self._enough(len(self._bundles), "hospitals' shares")
            self._stage = max(self._stage, 3)
            self._inbox = {}
            for sender in sorted(self._bundles):
                for bundle in self._bundles[sender]:
                    self._inbox.setdefault(bundle.recipient, []).append(bundle)
        return list(self._inbox.get(recipient, []))

    # ----- stage 3: masked vectors ---------------------------------------------------------------

    def fold(self, sender: str, vector: np.ndarray) -> None:
        self._at(3, f"{sender}'s masked vector")
        if sender not in self._bundles:
            raise SecureAggregationError(f"{sender} sent a masked vector without sharing first")
        if sender in self._masked:
            raise SecureAggregationError(f"{sender} already sent its masked vector for this round")
        if vector.dtype != np.uint32 or vector.shape != (self.setup.length,):
            raise SecureAggregationError(
                f"{sender}'s masked vector must be {self.setup.length} uint32 values, not {vector.shape} {vector.dtype}"
            )
        self._sum += vector
        self._masked.add(sender)

    def unmask_request(self) -> UnmaskRequest:
        """Stage 4: who the sum holds (survivors) and who shared but sent no vector (dropped)."""
        if self._request is None:
            self._enough(len(self._masked), "masked vectors")
            self._stage = 4
            self._request = UnmaskRequest(
                tuple(sorted(self._masked)), tuple(sorted(self._bundles.keys() - self._masked))
            )
        return self._request

    def take_confirmation(self, sender: str, signature: bytes) -> None:
        self._at(4, f"{sender}'s confirmation")
        request = self.unmask_request()
        if sender not in request.survivors:
            raise SecureAggregationError(f"{sender} is not a survivor of this round")
        self._signatures[sender] = signature

    def confirmations(self) -> dict[str, bytes]:
        """Stage 4b's input: the survivors' signatures (no more are taken once they are handed out)."""
        self._stage = max(self._stage, 5)
        return dict(self._signatures)

    @property
    def stage(self) -> int:
        """1 keys, 2 shares, 3 masked vectors, 4 confirmations, 5 reveals."""
        return self._stage

    def pending(self, stage: int) -> set[str]:
        """Who the stage still waits for."""
        if stage == 1:
            return set(self.setup.names) - self._keys.keys()
        if stage == 2:
            return set(self._keys) - self._bundles.keys()
        if stage == 3:
            return set(self._bundles) - self._masked
        survivors = set(self._request.survivors) if self._request is not None else set()
        return survivors - (self._signatures.keys() if stage == 4 else self._reveals.keys())

    def advance(self, stage: int) -> None:
        """Close ``stage``: the next one's input is fixed (SecureAggregationError below the threshold)."""
        if stage == 1:
            self.relayed_keys()
        elif stage == 2:
            self.bundles_for("")
        elif stage == 3:
            self.unmask_request()
        elif stage == 4:
            self._enough(len(self._signatures), "confirmations")
            self.confirmations()

    def take_reveal(self, reveal: Reveal) -> None:
        request = self.unmask_request()
        if reveal.sender not in request.survivors or reveal.sender in self._reveals:
            raise SecureAggregationError(f"{reveal.sender} may not reveal shares now")
        if not set(reveal.self_shares) <= set(request.survivors) or not set(reveal.key_shares) <= set(request.dropped):
            raise SecureAggregationError(f"{reveal.sender} revealed shares the round did not ask for")
        self._reveals[reveal.sender] = reveal

    # ----- the result ----------------------------------------------------------------------------

    def result(self) -> np.ndarray:
        """The weighted average of the survivors' clipped differences (float64, flat)."""
        request = self.unmask_request()
        setup = self.setup
        self_seeds = [self._rebuild(survivor, "self") for survivor in request.survivors]
        stray: list[tuple[str, str, bytes]] = []
        for gone in request.dropped:
            private = X25519PrivateKey.from_private_bytes(self._rebuild(gone, "key"))
            # Only a survivor that had the dropped hospital's shares added a pair mask for it.
            had_shares = {b.recipient for b in self._bundles[gone]}
            for survivor in sorted(had_shares & set(request.survivors)):
                seed = keys.agree(private, self._keys[survivor].mask, use="mask", federation=setup.federation,
                                  round_number=setup.round, a=gone, b=survivor)  # fmt: skip
                stray.append((survivor, gone, seed))
        total = masking.unmask(self._sum, self_seeds, stray, setup.label)
        present = sum(setup.weight(n) for n in request.survivors)
        return setup.fixed_point.decode(total) / present

    def _rebuild(self, owner: str, which: str) -> bytes:
        """``owner``'s self seed or mask key from the revealed shares (its own and its neighbours')."""
        revealed = ((r.sender, r.self_shares if which == "self" else r.key_shares) for r in self._reveals.values())
        shares: Mapping[int, bytes] = {self.setup.index(s): held[owner] for s, held in revealed if owner in held}
        if len(shares) < self.setup.threshold:
            raise SecureAggregationError(
                f"only {len(shares)} shares of {owner}'s {'self-mask seed' if which == 'self' else 'mask key'} "
                f"arrived; {self.setup.threshold} are needed: the round fails and nothing is unmasked"
            )
        return shamir.combine(shares, self.setup.threshold)

    def _check_hospital(self, name: str, what: str) -> None:
        if name not in self.setup.names:
            raise SecureAggregationError(f"{name} sent {what} but is not a hospital of this round")

    def _enough(self, count: int, what: str) -> None:
        if count < self.setup.threshold:
            raise SecureAggregationError(
                f"{count} {what} arrived; the round needs {self.setup.threshold}: it fails and nothing is revealed"
            )


class SecureAccumulator(Stateless):
    """A secure round as the coordinator's rounds see an accumulator: masked vectors folded as they
    arrive (``add_from``), and the result the global model moved by the unmasked weighted average."""

    def __init__(self, global_state: Mapping[str, np.ndarray], secure: SecureRound) -> None:
        self._global = global_state
        self.secure = secure
        self._examples: dict[str, int] = {}
        self._result: StateDict | None = None
        self.failed: str | None = None
        """why the round cannot be unmasked (too few hospitals at a stage), once it is known"""

    @property
    def num_updates(self) -> int:
        return len(self._examples)

    @property
    def num_examples(self) -> int:
        return sum(self._examples.values())

    def add(self, update: Mapping[str, np.ndarray], num_examples: int) -> None:
        raise AggregationError("a securely aggregated update needs its sender: the coordinator folds it with add_from")

    def add_from(self, sender: str, update: Mapping[str, np.ndarray], num_examples: int) -> None:
        try:
            self.secure.fold(sender, vector.from_update(update))
        except SecureAggregationError as exc:
            raise AggregationError(str(exc)) from None
        self._examples[sender] = num_examples

    def result(self) -> StateDict:
        if self._result is None:
            if self.failed is not None:
                raise AggregationError(f"secure aggregation failed: {self.failed}")
            try:
                self._result = vector.apply(self._global, self.secure.result())
            except SecureAggregationError as exc:
                raise AggregationError(f"secure aggregation failed: {exc}") from None
        return self._result

    def close(self) -> None:
        """Nothing outside memory to free."""
