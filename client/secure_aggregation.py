"""A hospital's side of a secure-aggregation round (common/secagg/messages.py lists the stages): what it
sends at each stage, and what it checks before it does, so that a coordinator that lies learns nothing.

It refuses (SecureAggregationError) to go on when the relayed keys of a neighbour do not verify
against the federation's CA or its own keys come back changed, when fewer than the threshold of its
neighbourhood are left, when a bundle addressed to it does not open, and at the unmasking stage when
the coordinator names a hospital both as a survivor and as dropped, names hospitals that never
shared with it, asks a second time, or cannot show that enough survivors were told the same sets
(each survivor signs them with its certificate's key): revealing both secrets of one peer would
unmask that peer's update.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from medfed.common.errors import SecureAggregationError
from medfed.common.secagg import keys, masking, shamir
from medfed.common.secagg.messages import Reveal, Setup, ShareBundle, UnmaskRequest

SHARE_PAIR = 2 * shamir.SHARE_BYTES


def _associated(setup: Setup, sender: str, recipient: str) -> bytes:
    return b"medfed/secagg/share\0" + setup.label + b"\0" + sender.encode() + b"\0" + recipient.encode()


class HospitalRound:
    def __init__(
        self,
        name: str,
        setup: Setup,
        *,
        ca: x509.Certificate,
        signing_key: ec.EllipticCurvePrivateKey,
        certificate: bytes,
    ) -> None:
        setup.index(name)  # one of the round's hospitals
        self.name, self.setup, self._ca = name, setup, ca
        self._keys = keys.RoundKeys()
        self._own = self._keys.public(name, setup.federation, setup.round, signing_key, certificate)
        self._self_seed = os.urandom(32)
        self._neighbours = setup.neighbours(name)
        self._peers: dict[str, keys.PublicKeys] = {}
        self._held: dict[str, tuple[bytes, bytes]] = {}
        """sender -> (its self-seed share, its mask-key share) that this hospital holds"""
        self._revealed = False
        self._confirmed: UnmaskRequest | None = None
        self._signing_key = signing_key

    def advertise(self) -> keys.PublicKeys:
        return self._own

    def share(self, relayed: Iterable[keys.PublicKeys]) -> list[ShareBundle]:
        """Stage 2: check the neighbours' keys, then seal shares of both secrets for each of them."""
        setup = self.setup
        peers: dict[str, keys.PublicKeys] = {}
        for advertised in relayed:
            if advertised.hospital == self.name:
                if advertised != self._own:
                    raise SecureAggregationError("the coordinator relayed keys for this hospital that are not its own")
                continue
            if advertised.hospital in self._neighbours:
                keys.verify(advertised, self._ca, setup.federation, setup.round)
                peers[advertised.hospital] = advertised
        self._require(len(peers) + 1, "advertised their keys")
        self._peers = peers
        holders = [self.name, *sorted(peers)]
        x = {h: setup.index(h) for h in holders}
        seed_shares = shamir.split(self._self_seed, setup.threshold, list(x.values()))
        key_shares = shamir.split(self._keys.mask.private_bytes_raw(), setup.threshold, list(x.values()))
        bundles = []
        for holder in holders:
            plain = seed_shares[x[holder]] + key_shares[x[holder]]
            if holder == self.name:
                self._held[self.name] = (seed_shares[x[holder]], key_shares[x[holder]])
                continue
            cipher = self._agree(holder, "cipher")
            bundles.append(
                ShareBundle(self.name, holder, keys.seal(cipher, plain, _associated(setup, self.name, holder)))
            )
        return bundles

    def mask(self, bundles: Iterable[ShareBundle], term: np.ndarray) -> np.ndarray:
        """Stage 3: keep the shares sent to this hospital, then mask ``term`` (fixed_point's) with a pair
        mask for each neighbour that shared with it and with its own self mask."""
        setup = self.setup
        for bundle in bundles:
            if bundle.recipient != self.name or bundle.sender not in self._peers or bundle.sender in self._held:
                raise SecureAggregationError(f"an unexpected share bundle from {bundle.sender} to {bundle.recipient}")
            plain = keys.open_sealed(self._agree(bundle.sender, "cipher"), bundle.sealed,
                                     _associated(setup, bundle.sender, self.name))  # fmt: skip
            if len(plain) != SHARE_PAIR:
                raise SecureAggregationError(f"the shares from {bundle.sender} are malformed")
            self._held[bundle.sender] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        self._require(len(self._held), "sent their shares")
        if len(term) != setup.length:
            raise SecureAggregationError(f"a masked vector has {setup.length} values, not {len(term)}")
        pairs = {peer: self._agree(peer, "mask") for peer in self._held if peer != self.name}
        return masking.masked(term, self.name, self._self_seed, pairs, setup.label)

    def confirm(self, request: UnmaskRequest) -> bytes:
        """Stage 4a: sign the survivors and dropped the coordinator announces, so that every survivor can
        check that all were told the same (a coordinator naming a hospital a survivor to some and dropped
        to others could otherwise collect both of its secrets)."""
        if self._confirmed is not None:
            raise SecureAggregationError("the coordinator announced the survivors twice: refused")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            both = ", ".join(sorted(survivors & dropped))
            raise SecureAggregationError(f"the coordinator asked for both secrets of {both}: refused")
        if self.name not in survivors:
            raise SecureAggregationError("the coordinator says this hospital dropped, yet asks it to go on")
        named = (survivors | dropped) & (self._neighbours | {self.name})
        if not named <= set(self._held):
            raise SecureAggregationError("the coordinator names as survivors or dropped neighbours that never shared")
        self._require(len(survivors & set(self._held)), "survived to the unmasking")
        self._confirmed = request
        return keys.sign_survivors(self._signing_key, self.setup.federation, self.setup.round, request.survivors,
                                   request.dropped)  # fmt: skip

    def reveal(self, request: UnmaskRequest, signatures: Mapping[str, bytes]) -> Reveal:
        """Stage 4b: once at least the threshold of its neighbourhood's survivors signed the same sets,
        the self-seed shares of survivors and the mask-key shares of dropped hospitals, never both."""
        if self._confirmed is None or request != self._confirmed:
            raise SecureAggregationError("the unmasking request differs from the one this hospital confirmed")
        if self._revealed:
            raise SecureAggregationError("the coordinator asked twice for this round's shares: refused")
        agreeing = 1  # this hospital's own confirmation
        for peer in sorted(set(request.survivors) & set(self._peers)):
            signature = signatures.get(peer)
            if signature is not None and keys.verify_survivors(
                self._peers[peer].certificate, signature, self.setup.federation, self.setup.round, request.survivors,
                request.dropped,
            ):  # fmt: skip
                agreeing += 1
        self._require(agreeing, "confirmed the same survivors")
        self._revealed = True
        survivors, dropped = set(request.survivors), set(request.dropped)
        return Reveal(
            self.name,
            self_shares={peer: self._held[peer][0] for peer in sorted(survivors & set(self._held))},
            key_shares={peer: self._held[peer][1] for peer in sorted(dropped & set(self._held))},
        )

    def _require(self, count: int, what: str) -> None:
        if count < self.setup.threshold:
            raise SecureAggregationError(
                f"only {count} of this hospital's neighbourhood {what}; the round needs {self.setup.threshold}: "
                "nothing more is sent"
            )

    def _agree(self, peer: str, use: str) -> bytes:
        public = self._peers[peer]
        private: X25519PrivateKey = self._keys.cipher if use == "cipher" else self._keys.mask
        return keys.agree(private, public.cipher if use == "cipher" else public.mask, use=use,
                          federation=self.setup.federation, round_number=self.setup.round, a=self.name,
                          b=peer)  # fmt: skip
