"""A secure-aggregation round in process, hospital objects against the coordinator's: the unmasked sum
is the weighted average within the fixed-point bound, hospitals may drop at every stage while at
least the threshold are left, fewer fail the round without revealing anything, and a coordinator
that substitutes keys or asks for both secrets of a hospital is refused by the honest ones."""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from medfed.client.secure_aggregation import HospitalRound
from medfed.common import pki
from medfed.common.errors import SecureAggregationError
from medfed.common.secagg import keys
from medfed.common.secagg.messages import Setup, UnmaskRequest, default_threshold
from medfed.server.secure_aggregation import SecureRound

LENGTH = 300
NAMES = [f"hospital_{c}" for c in "abcdef"]


@pytest.fixture(scope="module")
def certificates() -> tuple[x509.Certificate, dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]]]:
    ca_key, ca = pki.make_ca()
    made = {}
    for name in NAMES:
        key, cert = pki.issue(ca_key, ca, name)
        made[name] = (key, cert.public_bytes(Encoding.PEM))
    return ca, made


def setup_for(names: list[str], counts: list[int] | None = None) -> Setup:
    counts = counts or [10 * (i + 1) for i in range(len(names))]
    return Setup("f00d", 4, tuple(zip(names, counts, strict=True)), default_threshold(len(names)), os.urandom(32),
                 clip=0.5, length=LENGTH)  # fmt: skip


def hospitals(setup: Setup, certificates: tuple) -> dict[str, HospitalRound]:
    ca, made = certificates
    return {n: HospitalRound(n, setup, ca=ca, signing_key=made[n][0], certificate=made[n][1]) for n in setup.names}


def differences(names: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)  # test data only
    return {n: rng.normal(0, 0.2, LENGTH) for n in names}


def expected(setup: Setup, diffs: dict[str, np.ndarray], included: list[str]) -> np.ndarray:
    weights = np.array([setup.weight(n) for n in included])
    stacked = np.clip(np.stack([diffs[n] for n in included]), -setup.clip, setup.clip)
    return (stacked * weights[:, None]).sum(axis=0) / weights.sum()


NONE: frozenset[str] = frozenset()


def run_round(setup: Setup, nodes: dict[str, HospitalRound], diffs: dict[str, np.ndarray], *,
              no_keys: frozenset[str] = NONE, no_shares: frozenset[str] = NONE, no_vector: frozenset[str] = NONE,
              no_reveal: frozenset[str] = NONE) -> np.ndarray:  # fmt: skip
    """One round; the named hospitals drop before the stage named (in shuffled arrival orders)."""
    coordinator = SecureRound(setup)
    order = lambda names: random.sample(sorted(names), len(names))  # noqa: E731
    active = [n for n in nodes if n not in no_keys]
    for n in order(active):
        coordinator.take_keys(nodes[n].advertise())
    relayed = coordinator.relayed_keys()
    active = [n for n in active if n not in no_shares]
    for n in order(active):
        coordinator.take_shares(n, nodes[n].share(relayed))
    active = [n for n in active if n not in no_vector]
    fp = setup.fixed_point
    for n in order(active):
        term = fp.encode(diffs[n], setup.weight(n))
        coordinator.fold(n, nodes[n].mask(coordinator.bundles_for(n), term))
    request = coordinator.unmask_request()
    for n in order(active):
        coordinator.take_confirmation(n, nodes[n].confirm(request))
    active = [n for n in active if n not in no_reveal]
    for n in order(active):
        coordinator.take_reveal(nodes[n].reveal(request, coordinator.confirmations()))
    return coordinator.result()


def test_the_unmasked_sum_is_the_weighted_average_within_the_fixed_point_bound(certificates: tuple) -> None:
    setup = setup_for(NAMES)
    diffs = differences(NAMES)
    result = run_round(setup, hospitals(setup, certificates), diffs)
    assert np.abs(result - expected(setup, diffs, NAMES)).max() <= setup.fixed_point.error_bound


@pytest.mark.parametrize(
    "stage",
    ["no_keys", "no_shares", "no_vector", "no_reveal"],
)
def test_a_hospital_dropping_at_any_stage_leaves_the_average_of_the_others(certificates: tuple, stage: str) -> None:
    setup = setup_for(NAMES)
    diffs = differences(NAMES)
    gone = frozenset({"hospital_c"})
    result = run_round(setup, hospitals(setup, certificates), diffs, **{stage: gone})
    # A hospital that dropped after sending its masked vector is still in the sum; before, it is not.
    included = NAMES if stage == "no_reveal" else [n for n in NAMES if n not in gone]
    assert np.abs(result - expected(setup, diffs, included)).max() <= 2 * setup.fixed_point.error_bound


@pytest.mark.parametrize("stage", ["no_keys", "no_shares", "no_vector"])
def test_below_the_threshold_the_round_fails_and_nothing_is_revealed(certificates: tuple, stage: str) -> None:
    setup = setup_for(NAMES)  # six hospitals, threshold 5
    assert setup.threshold == 5
    with pytest.raises(SecureAggregationError, match="needs 5"):
        run_round(setup, hospitals(setup, certificates), differences(NAMES),
                  **{stage: frozenset({"hospital_a", "hospital_b"})})  # fmt: skip


def test_too_few_reveals_rebuild_nothing(certificates: tuple) -> None:
    setup = setup_for(NAMES)
    with pytest.raises(SecureAggregationError, match="the round fails and nothing is unmasked"):
        run_round(setup, hospitals(setup, certificates), differences(NAMES),
                  no_reveal=frozenset({"hospital_a", "hospital_b"}))  # fmt: skip


def test_a_substituted_key_is_refused_by_the_honest_hospitals(certificates: tuple) -> None:
    setup = setup_for(NAMES)
    nodes = hospitals(setup, certificates)
    relayed = [nodes[n].advertise() for n in NAMES]
    impostor = keys.RoundKeys()
    relayed[1] = dataclasses.replace(relayed[1], mask=keys._raw(impostor.mask.public_key()))
    with pytest.raises(SecureAggregationError, match="not signed by hospital_b"):
        nodes["hospital_a"].share(relayed)
    own = [nodes[n].advertise() for n in NAMES]
    own[0] = dataclasses.replace(own[0], cipher=keys._raw(impostor.cipher.public_key()))
    with pytest.raises(SecureAggregationError, match="not its own"):
        nodes["hospital_a"].share(own)


def prepared(setup: Setup, certificates: tuple) -> tuple[SecureRound, dict[str, HospitalRound], UnmaskRequest]:
    """A round that reached the unmasking stage with every hospital."""
    coordinator, nodes = SecureRound(setup), hospitals(setup, certificates)
    for n in NAMES:
        coordinator.take_keys(nodes[n].advertise())
    relayed = coordinator.relayed_keys()
    for n in NAMES:
        coordinator.take_shares(n, nodes[n].share(relayed))
    for n in NAMES:
        coordinator.fold(n, nodes[n].mask(coordinator.bundles_for(n), setup.fixed_point.encode(np.zeros(LENGTH), 0.1)))
    return coordinator, nodes, coordinator.unmask_request()


def test_a_coordinator_asking_for_both_secrets_of_a_hospital_is_refused(certificates: tuple) -> None:
    setup = setup_for(NAMES)
    _, nodes, request = prepared(setup, certificates)
    # Named both a survivor and dropped in one request:
    both = UnmaskRequest(request.survivors, ("hospital_c",))
    with pytest.raises(SecureAggregationError, match="both secrets of hospital_c"):
        nodes["hospital_a"].confirm(both)
    # Named a survivor to some and dropped to others: the others' signatures do not cover the sets.
    told_dropped = UnmaskRequest(tuple(n for n in request.survivors if n != "hospital_c"), ("hospital_c",))
    signatures = {n: nodes[n].confirm(request) for n in NAMES if n not in ("hospital_a",)}
    nodes["hospital_a"].confirm(told_dropped)
    with pytest.raises(SecureAggregationError, match="confirmed the same survivors"):
        nodes["hospital_a"].reveal(told_dropped, signatures)
    # And no hospital answers twice.
    reveal = nodes["hospital_b"].reveal(request, signatures)
    assert set(reveal.self_shares) == set(NAMES) and reveal.key_shares == {}
    with pytest.raises(SecureAggregationError, match="twice"):
        nodes["hospital_b"].reveal(request, signatures)


def test_a_stage_closes_for_late_messages(certificates: tuple) -> None:
    setup = setup_for(NAMES)
    coordinator, nodes, _ = prepared(setup, certificates)
    with pytest.raises(SecureAggregationError, match="after its stage closed"):
        coordinator.take_keys(nodes["hospital_a"].advertise())
    with pytest.raises(SecureAggregationError, match="after its stage closed"):
        coordinator.fold("hospital_a", np.zeros(LENGTH, dtype=np.uint32))


def test_a_large_federation_masks_only_with_its_graph_neighbours(certificates: tuple) -> None:
    names = [f"h{i:02d}" for i in range(40)]
    ca_key, ca = pki.make_ca()
    made = {}
    for name in names:
        key, cert = pki.issue(ca_key, ca, name)
        made[name] = (key, cert.public_bytes(Encoding.PEM))
    setup = Setup("f00d", 1, tuple((n, 5) for n in names), default_threshold(23), os.urandom(32), clip=0.5,
                  length=LENGTH)  # fmt: skip
    assert all(len(setup.neighbours(n)) == 22 for n in names)
    nodes = {n: HospitalRound(n, setup, ca=ca, signing_key=made[n][0], certificate=made[n][1]) for n in names}
    diffs = differences(names)
    result = run_round(setup, nodes, diffs, no_vector=frozenset({"h07"}))
    included = [n for n in names if n != "h07"]
    assert np.abs(result - expected(setup, diffs, included)).max() <= 2 * setup.fixed_point.error_bound
