"""Provenance's building blocks: the digests (streamed equals whole, every field counts, independent of
layout and file), signatures and the certificates that vouch for them, and receipts."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from medfed.common import pki
from medfed.common.provenance.digests import UpdateDigest, model_digest, update_digest
from medfed.common.provenance.receipts import Receipt, SentUpdate, issue_receipt
from medfed.common.provenance.records import AuditRecord, Contribution, canonical
from medfed.common.provenance.signing import Signer, certificate_problem, sign_update, update_signed
from medfed.common.tensors import encode

STATE = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    "half": np.ones(5, dtype=ml_dtypes.bfloat16),
    "mask": np.array([True, False]),
}


@pytest.fixture(scope="module")
def federation() -> dict[str, object]:
    ca_key, ca = pki.make_ca()
    other_key, other_ca = pki.make_ca("another CA")
    return {
        "ca": ca, "ca_key": ca_key,
        "server": Signer(*pki.issue(ca_key, ca, "server", server_hosts=["localhost"])),
        "hospital_a": Signer(*pki.issue(ca_key, ca, "hospital_a")),
        "ops": Signer(*pki.issue(ca_key, ca, "ops", admin=True)),
        "foreign": Signer(*pki.issue(other_key, other_ca, "hospital_a")),
        "foreign_server": Signer(*pki.issue(other_key, other_ca, "server", server_hosts=["localhost"])),
    }  # fmt: skip


def test_an_update_digest_streamed_chunk_by_chunk_equals_the_digest_of_the_whole_stream() -> None:
    encoded = encode(STATE)
    streamed = UpdateDigest("fed", 3, 10, encoded.layout, delta=False)
    for _, data in encoded.chunks(chunk_size=17):
        streamed.update(data)
    assert streamed.digest() == update_digest("fed", 3, 10, encoded.layout, encoded.buffer, delta=False)


def test_every_field_of_an_update_changes_its_digest() -> None:
    encoded = encode(STATE)
    base = update_digest("fed", 3, 10, encoded.layout, encoded.buffer, delta=False)
    flipped = bytearray(encoded.buffer)
    flipped[5] ^= 1
    others = [
        update_digest("feD", 3, 10, encoded.layout, encoded.buffer, delta=False),
        update_digest("fed", 4, 10, encoded.layout, encoded.buffer, delta=False),
        update_digest("fed", 3, 11, encoded.layout, encoded.buffer, delta=False),
        update_digest("fed", 3, 10, encoded.layout, encoded.buffer, delta=True),
        update_digest("fed", 3, 10, encode(STATE, {"conv.weight": 0.5}).layout, encoded.buffer, delta=False),
        update_digest("fed", 3, 10, encoded.layout, flipped, delta=False),
    ]
    assert len({base, *others}) == 1 + len(others)


def test_a_models_digest_ignores_order_and_layout_and_survives_a_safetensors_file(tmp_path: Path) -> None:
    shuffled = dict(reversed(list(STATE.items())))
    assert model_digest(STATE) == model_digest(shuffled) == model_digest(encode(shuffled).tensors())
    save_file({k: np.asarray(v) for k, v in STATE.items()}, str(tmp_path / "m.safetensors"))
    assert model_digest(load_file(str(tmp_path / "m.safetensors"))) == model_digest(STATE)
    for changed in ({**STATE, "mask": np.array([True, True])}, {**STATE, "half": np.ones(5, dtype=np.float32)},
                    {**STATE, "conv.weight": STATE["conv.weight"].reshape(3, 2, 4)},
                    {k: v for k, v in STATE.items() if k != "mask"}):  # fmt: skip
        assert model_digest(changed) != model_digest(STATE)


def test_an_update_signature_verifies_only_with_the_signers_certificate_and_only_for_its_digest(
    federation: dict[str, object],
) -> None:
    hospital, other = federation["hospital_a"], federation["foreign"]
    assert isinstance(hospital, Signer) and isinstance(other, Signer)
    digest = bytes(range(32))
    signature = sign_update(hospital, digest)
    assert update_signed(hospital.certificate, signature, digest)
    assert not update_signed(hospital.certificate, signature, digest[::-1])
    assert not update_signed(other.certificate, signature, digest)
    assert not update_signed(hospital.certificate, sign_update(other, digest), digest)


def test_a_certificate_vouches_only_for_its_role_and_name_from_the_federations_ca_while_valid(
    federation: dict[str, object],
) -> None:
    ca = federation["ca"]
    signers = {k: v for k, v in federation.items() if isinstance(v, Signer)}
    now = dt.datetime.now(dt.timezone.utc)
    assert certificate_problem(signers["hospital_a"].certificate, ca, "hospital", name="hospital_a", at=now) is None
    assert certificate_problem(signers["server"].certificate, ca, "coordinator", at=now) is None
    problems = {
        "foreign": certificate_problem(signers["foreign"].certificate, ca, "hospital", name="hospital_a"),
        "operator": certificate_problem(signers["ops"].certificate, ca, "hospital", name="ops"),
        "server as hospital": certificate_problem(signers["server"].certificate, ca, "hospital"),
        "hospital as server": certificate_problem(signers["hospital_a"].certificate, ca, "coordinator"),
        "other name": certificate_problem(signers["hospital_a"].certificate, ca, "hospital", name="hospital_b"),
        "expired": certificate_problem(
            signers["hospital_a"].certificate, ca, "hospital", at=now + dt.timedelta(days=500)
        ),
    }
    assert problems["foreign"] == "was not issued by the federation's CA"
    assert problems["operator"] == problems["server as hospital"] == "is not a hospital's certificate"
    assert problems["hospital as server"] == "is not a coordinator's certificate"
    assert "names 'hospital_a', not 'hospital_b'" in str(problems["other name"])
    assert "was not valid at" in str(problems["expired"])


def test_a_receipt_verifies_and_a_forged_or_altered_one_does_not(federation: dict[str, object]) -> None:
    ca, server, hospital = federation["ca"], federation["server"], federation["hospital_a"]
    assert isinstance(server, Signer) and isinstance(hospital, Signer)
    receipt = issue_receipt(server, federation_id="f1", round_number=2, hospital="hospital_a", update=bytes(32),
                            num_examples=40, chain_head="ab" * 32)  # fmt: skip
    assert receipt.problem(ca) is None  # type: ignore[arg-type]
    assert Receipt.from_json(receipt.to_json()) == receipt
    altered = [replace(receipt, round=3), replace(receipt, update="01" * 32), replace(receipt, num_examples=41),
               replace(receipt, chain_head=None), replace(receipt, hospital="hospital_b")]  # fmt: skip
    for bad in altered:
        assert "does not verify" in str(bad.problem(ca))  # type: ignore[arg-type]
    by_a_hospital = issue_receipt(hospital, federation_id="f1", round_number=2, hospital="hospital_a",
                                  update=bytes(32), num_examples=40, chain_head=None)  # fmt: skip
    assert "is not a coordinator's certificate" in str(by_a_hospital.problem(ca))  # type: ignore[arg-type]
    foreign = federation["foreign_server"]
    assert isinstance(foreign, Signer)
    by_another_ca = issue_receipt(foreign, federation_id="f1", round_number=2, hospital="hospital_a",
                                  update=bytes(32), num_examples=40, chain_head=None)  # fmt: skip
    assert "not issued by the federation's CA" in str(by_another_ca.problem(ca))  # type: ignore[arg-type]
    swapped = replace(receipt, certificate=by_another_ca.certificate)
    assert "not the one it names" in str(swapped.problem(ca))  # type: ignore[arg-type]
    sent = SentUpdate("f1", 2, "hospital_a", "cd" * 32, "00" * 32, 40, "c2ln", receipt.time, receipt)
    assert SentUpdate.from_json(sent.to_json()) == sent


def test_records_round_trip_through_their_canonical_json() -> None:
    record = AuditRecord(
        "round", "f1", 1, "2026-12-03T10:00:00.000+00:00", "aa" * 32, model_in="bb" * 32,
        contributions=(Contribution("hospital_a", True, 10, "cc" * 32, "c2ln", "dd" * 32),
                       Contribution("hospital_b", False, 5, None, None, None, "not finite")),
        missing=("hospital_c",), strategy={"name": "fedavg", "lr": 0.1}, previous="ee" * 32,
    )  # fmt: skip
    line = record.line()
    assert line == canonical(json.loads(line)) and line.startswith(b'{"certificates":{},"contributions":[{')
    assert AuditRecord.from_json(json.loads(line)) == record
