"""Secure aggregation's building blocks: Shamir sharing, the mask generator, fixed point, signed keys,
masking and unmasking (with hospitals that drop out), and that a masked update shows nothing of itself."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import os
import random

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.common import pki
from medfed.common.errors import SecureAggregationError
from medfed.common.secagg import fixed_point, graph, keys, masking, prg, shamir

FEDERATION, ROUND, LABEL = "f00d", 3, b"f00d/3"


# ----- Shamir -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(1, 12), data=st.data())
def test_any_threshold_of_shares_rebuilds_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, n))
    shares = shamir.split(secret, threshold, list(range(1, n + 1)))
    chosen = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=threshold, max_size=n, unique=True))
    assert shamir.combine({x: shares[x] for x in chosen}, threshold) == secret


def test_fewer_shares_than_the_threshold_rebuild_nothing() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    with pytest.raises(SecureAggregationError, match="cannot rebuild"):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)
    # Two shares read as a 2-of-n sharing give a different field element, almost never the secret.
    with contextlib.suppress(SecureAggregationError):  # usually not even a 32-byte value
        assert shamir.combine({1: shares[1], 2: shares[2]}, 2) != secret


def test_a_forged_share_is_caught_or_rebuilds_something_else() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 2, [1, 2, 3])
    forged = dict(shares)
    forged[2] = (int.from_bytes(shares[2], "big") ^ 1).to_bytes(shamir.SHARE_BYTES, "big")
    with contextlib.suppress(SecureAggregationError):
        assert shamir.combine({1: forged[1], 2: forged[2]}, 2) != secret
    with pytest.raises(SecureAggregationError):
        shamir.combine({1: b"short", 2: shares[2]}, 2)


# ----- the mask generator -------------------------------------------------------------------------


def test_a_seed_gives_the_same_mask_in_any_chunking_and_labels_give_other_masks() -> None:
    seed = os.urandom(32)
    whole = prg.mask(seed, b"a", 10_001)
    pieces = np.concatenate(list(prg.mask_chunks(seed, b"a", 10_001, chunk=999)))
    assert whole.dtype == np.uint32 and np.array_equal(whole, pieces)
    assert not np.array_equal(whole, prg.mask(seed, b"b", 10_001))
    assert not np.array_equal(whole, prg.mask(os.urandom(32), b"a", 10_001))


def chi_square_uniform(values: np.ndarray, bins: int = 256) -> float:
    counts = np.bincount((values >> np.uint32(24)).astype(np.int64), minlength=bins)
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


# 255 degrees of freedom: the 99.99th percentile of chi-square is about 360.
CHI_SQUARE_LIMIT = 360.0


def test_a_masked_update_shows_nothing_of_the_update() -> None:
    fp = fixed_point.FixedPoint(clip=1.0, hospitals=3)
    update = np.zeros(200_000)
    update[:100_000] = 1.0  # as far from uniform as an update can be
    term = fp.encode(update, 1.0)
    assert chi_square_uniform(term) > 10_000
    vector = masking.masked(term, "hospital_a", os.urandom(32), {"hospital_b": os.urandom(32)}, LABEL)
    assert chi_square_uniform(vector) < CHI_SQUARE_LIMIT
    assert chi_square_uniform(vector[:100_000]) < CHI_SQUARE_LIMIT  # the ones and the zeros look alike


# ----- fixed point --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_the_sum_of_terms_is_the_weighted_average_within_the_stated_bound(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)  # test data only
    fp = fixed_point.FixedPoint(clip=0.5, hospitals=n)
    differences = rng.normal(0, 0.3, size=(n, 257))
    counts = rng.integers(1, 1000, size=n)
    weights = counts / counts.sum()
    total = np.zeros(257, dtype=np.uint32)
    for difference, weight in zip(differences, weights, strict=True):
        total += fp.encode(difference, float(weight))
    expected = (np.clip(differences, -0.5, 0.5) * weights[:, None]).sum(axis=0)
    assert np.abs(fp.decode(total) - expected).max() <= fp.error_bound


def test_values_at_the_ends_of_the_range_do_not_wrap() -> None:
    fp = fixed_point.FixedPoint(clip=1.0, hospitals=4)
    for value in (1.0, -1.0, 50.0, -50.0):
        total = sum((fp.encode(np.array([value]), 0.25) for _ in range(4)), np.zeros(1, dtype=np.uint32))
        assert fp.decode(total)[0] == pytest.approx(max(-1.0, min(1.0, value)), abs=fp.error_bound)


# ----- keys ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation_pki() -> dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]]:
    """A CA and certificates: three hospitals, the coordinator, an operator, and a hospital of another CA."""
    ca_key, ca = pki.make_ca()
    made: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
    for name in ("hospital_a", "hospital_b", "hospital_c"):
        key, cert = pki.issue(ca_key, ca, name)
        made[name] = (key, cert.public_bytes(Encoding.PEM))
    key, cert = pki.issue(ca_key, ca, "coordinator", server_hosts=["coordinator"])
    made["server"] = (key, cert.public_bytes(Encoding.PEM))
    key, cert = pki.issue(ca_key, ca, "ops", admin=True)
    made["ops"] = (key, cert.public_bytes(Encoding.PEM))
    other_key, other = pki.make_ca("another CA")
    key, cert = pki.issue(other_key, other, "hospital_a")
    made["foreign"] = (key, cert.public_bytes(Encoding.PEM))
    made["ca"] = (ca_key, ca.public_bytes(Encoding.PEM))
    return made


def advertise(made: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]], name: str, as_name: str | None = None,
              ) -> tuple[keys.RoundKeys, keys.PublicKeys]:  # fmt: skip
    signing, certificate = made[name]
    private = keys.RoundKeys()
    return private, private.public(as_name or name, FEDERATION, ROUND, signing, certificate)


def ca_of(made: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(made["ca"][1])


def test_a_hospitals_signed_keys_verify_and_any_substitution_is_refused(federation_pki: dict) -> None:
    ca = ca_of(federation_pki)
    _, genuine = advertise(federation_pki, "hospital_b")
    keys.verify(genuine, ca, FEDERATION, ROUND)

    coordinator_keys = keys.RoundKeys().public("x", FEDERATION, ROUND, *federation_pki["server"])
    substituted = [
        dataclasses.replace(genuine, cipher=coordinator_keys.cipher),
        dataclasses.replace(genuine, mask=coordinator_keys.mask),
    ]
    for forged in substituted:
        with pytest.raises(SecureAggregationError, match="not signed by hospital_b"):
            keys.verify(forged, ca, FEDERATION, ROUND)
    with pytest.raises(SecureAggregationError, match="not signed"):
        keys.verify(genuine, ca, FEDERATION, ROUND + 1)  # replayed into another round
    with pytest.raises(SecureAggregationError, match="not a hospital's"):
        keys.verify(advertise(federation_pki, "server", "hospital_b")[1], ca, FEDERATION, ROUND)
    with pytest.raises(SecureAggregationError, match="not a hospital's"):
        keys.verify(advertise(federation_pki, "ops", "hospital_b")[1], ca, FEDERATION, ROUND)
    with pytest.raises(SecureAggregationError, match="is hospital_a's"):
        keys.verify(advertise(federation_pki, "hospital_a", "hospital_b")[1], ca, FEDERATION, ROUND)
    with pytest.raises(SecureAggregationError, match="not issued by the federation's CA"):
        keys.verify(advertise(federation_pki, "foreign")[1], ca, FEDERATION, ROUND)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=10_000)
    with pytest.raises(SecureAggregationError, match="not valid now"):
        keys.verify(genuine, ca, FEDERATION, ROUND, now=later)


def test_two_hospitals_agree_one_secret_per_use_and_shares_open_only_for_their_receiver() -> None:
    a, b, c = keys.RoundKeys(), keys.RoundKeys(), keys.RoundKeys()
    raw = lambda k: keys._raw(k.public_key())  # noqa: E731
    ab = keys.agree(a.mask, raw(b.mask), use="mask", federation=FEDERATION, round_number=ROUND, a="a", b="b")
    ba = keys.agree(b.mask, raw(a.mask), use="mask", federation=FEDERATION, round_number=ROUND, a="b", b="a")
    assert ab == ba and len(ab) == 32
    assert ab != keys.agree(a.mask, raw(b.mask), use="cipher", federation=FEDERATION, round_number=ROUND, a="a", b="b")
    assert ab != keys.agree(a.mask, raw(b.mask), use="mask", federation=FEDERATION, round_number=ROUND + 1, a="a",
                            b="b")  # fmt: skip
    key = keys.agree(a.cipher, raw(b.cipher), use="cipher", federation=FEDERATION, round_number=ROUND, a="a", b="b")
    sealed = keys.seal(key, b"a share", b"a->b round 3")
    assert keys.open_sealed(key, sealed, b"a->b round 3") == b"a share"
    other = keys.agree(c.cipher, raw(b.cipher), use="cipher", federation=FEDERATION, round_number=ROUND, a="c", b="b")
    for wrong_key, associated in ((other, b"a->b round 3"), (key, b"a->c round 3")):
        with pytest.raises(SecureAggregationError, match="does not open"):
            keys.open_sealed(wrong_key, sealed, associated)


# ----- masking, with dropouts ---------------------------------------------------------------------


def federation_round(names: list[str], size: int) -> tuple[dict, dict, dict, dict[str, np.ndarray]]:
    """Each hospital's key pairs, self seed and pair seeds (a complete graph), and a random term."""
    private = {n: keys.RoundKeys() for n in names}
    public = {n: keys._raw(private[n].mask.public_key()) for n in names}
    self_seeds = {n: os.urandom(32) for n in names}
    pairs = {
        n: {m: keys.agree(private[n].mask, public[m], use="mask", federation=FEDERATION, round_number=ROUND, a=n, b=m)
            for m in names if m != n}
        for n in names
    }  # fmt: skip
    rng = np.random.default_rng(7)  # test data only
    terms = {n: rng.integers(0, 2**32, size=size, dtype=np.uint64).astype(np.uint32) for n in names}
    return private, self_seeds, pairs, terms


def test_masks_cancel_in_every_order_of_arrival() -> None:
    names = ["hospital_a", "hospital_b", "hospital_c", "hospital_d"]
    _, self_seeds, pairs, terms = federation_round(names, 1001)
    vectors = {n: masking.masked(terms[n], n, self_seeds[n], pairs[n], LABEL) for n in names}
    expected = sum((terms[n] for n in names), np.zeros(1001, dtype=np.uint32))
    for order in itertools.permutations(names):
        total = np.zeros(1001, dtype=np.uint32)
        for n in order:
            total += vectors[n]
        assert np.array_equal(masking.unmask(total, [self_seeds[n] for n in names], [], LABEL), expected)


@pytest.mark.parametrize("dropped", [["hospital_c"], ["hospital_b", "hospital_e"]])
def test_a_hospital_that_dropped_before_its_masked_update_is_unmasked_from_t_survivors_shares(
    dropped: list[str],
) -> None:
    names = ["hospital_a", "hospital_b", "hospital_c", "hospital_d", "hospital_e"]
    threshold = 3
    private, self_seeds, pairs, terms = federation_round(names, 513)
    index = {n: i + 1 for i, n in enumerate(names)}
    # Each hospital shares its self seed and its mask key with everyone (shares kept by holder index).
    mask_secret = {n: private[n].mask.private_bytes_raw() for n in names}
    seed_shares = {n: shamir.split(self_seeds[n], threshold, list(index.values())) for n in names}
    key_shares = {n: shamir.split(mask_secret[n], threshold, list(index.values())) for n in names}

    survivors = [n for n in names if n not in dropped]
    total = np.zeros(513, dtype=np.uint32)
    for n in random.sample(survivors, len(survivors)):
        total += masking.masked(terms[n], n, self_seeds[n], pairs[n], LABEL)
    helpers = survivors[:threshold]  # t survivors answer: self-seed shares of survivors, key shares of the dropped
    rebuilt_seeds = [
        shamir.combine({index[h]: seed_shares[n][index[h]] for h in helpers}, threshold) for n in survivors
    ]
    stray = []
    for gone in dropped:
        key = shamir.combine({index[h]: key_shares[gone][index[h]] for h in helpers}, threshold)
        gone_private = keys.X25519PrivateKey.from_private_bytes(key)
        for n in survivors:
            peer = keys._raw(private[n].mask.public_key())
            seed = keys.agree(gone_private, peer, use="mask", federation=FEDERATION, round_number=ROUND, a=gone, b=n)
            stray.append((n, gone, seed))
    expected = sum((terms[n] for n in survivors), np.zeros(513, dtype=np.uint32))
    assert np.array_equal(masking.unmask(total, rebuilt_seeds, stray, LABEL), expected)
    with pytest.raises(SecureAggregationError):  # fewer than t survivors: nothing can be rebuilt
        shamir.combine({index[h]: key_shares[dropped[0]][index[h]] for h in helpers[: threshold - 1]}, threshold)


# ----- the neighbour graph ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 32, 33, 100, 1000])
def test_the_graph_is_symmetric_regular_and_complete_for_small_federations(n: int) -> None:
    names = [f"h{i:04d}" for i in range(n)]
    graph_ = graph.neighbours(names, os.urandom(32))
    k = graph.degree(n)
    assert all(len(peers) == k and name not in peers for name, peers in graph_.items())
    assert all(a in graph_[b] for a, peers in graph_.items() for b in peers)
    if n <= graph.COMPLETE_UP_TO:
        assert k == n - 1
    else:
        assert k % 2 == 0 and k < n - 1 and k <= max(22, 4 * np.log2(n))


def test_the_graph_is_the_same_for_everyone_with_the_seed_and_another_with_another_seed() -> None:
    names = [f"h{i:03d}" for i in range(200)]
    seed = os.urandom(32)
    assert graph.neighbours(names, seed) == graph.neighbours(list(reversed(names)), seed)
    assert graph.neighbours(names, seed) != graph.neighbours(names, os.urandom(32))
