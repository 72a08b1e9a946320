"""The audit chain as the coordinator writes it (server/audit_log.py) and as anyone walks it
(common/provenance/chain.py): in-process runs of the driver with hospitals that sign their updates, a
byte flipped anywhere, records dropped or swapped, a hospital signing with another key, and resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfed.common import pki
from medfed.common.errors import ConfigError
from medfed.common.provenance.chain import walk
from medfed.common.provenance.digests import model_digest
from medfed.common.provenance.receipts import Receipt
from medfed.common.provenance.signing import sign_update
from medfed.server.audit_log import AuditLog
from medfed.server.rounds import RoundOutcome
from medfed.server.run_dir import load_model
from tests.signed_runs import HOSPITALS, Federation, Run, lines, make_federation, signed_run


@pytest.fixture(scope="module")
def federation() -> Federation:
    return make_federation()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, federation: Federation) -> Run:
    return signed_run(tmp_path_factory.mktemp("signed"), federation)


def test_a_signed_run_writes_a_chain_that_verifies_from_its_first_model_to_its_last(finished: Run) -> None:
    chain = finished.chain
    assert chain.failure is None and chain.signed
    assert [(r.kind, r.round) for r in chain.records] == [("start", 0), ("round", 1), ("round", 2)]
    for record in chain.records[1:]:
        assert sorted(c.hospital for c in record.contributions if c.accepted) == list(HOSPITALS)
        assert all(c.signature and c.certificate for c in record.contributions)
        assert record.strategy == {"name": "fedavg"} and record.failed is None
    final, metadata = load_model(finished.out)
    assert chain.model == model_digest(final) and metadata["audit"]["head"] == chain.head
    assert len({r.model for r in chain.records}) == 3  # every round moved the model


def test_every_accepted_update_gets_a_receipt_that_the_chain_bears_out(finished: Run, federation: Federation) -> None:
    for name, sent in finished.kept.items():
        assert [s.round for s in sent] == [1, 2]
        for each in sent:
            receipt = each.receipt
            assert isinstance(receipt, Receipt) and receipt.problem(federation.ca) is None  # type: ignore[arg-type]
            assert receipt.update == each.update and receipt.hospital == name
            record = finished.chain.last_round(each.round)
            assert record is not None and each.received == record.model_in
            assert receipt.chain_head == finished.chain.hashes[each.round - 1]  # the record before its round


def test_a_byte_flipped_anywhere_in_the_chain_fails_at_the_line_that_holds_it(
    finished: Run, federation: Federation
) -> None:
    data = (finished.out / "audit.jsonl").read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    positions = sorted({*range(0, len(data), max(1, len(data) // 150)), *(s - 1 for s in starts[1:])})
    for position in positions:
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        chain = walk(bytes(flipped).split(b"\n")[:-1] if flipped.endswith(b"\n") else bytes(flipped).split(b"\n"),
                     federation.ca)  # type: ignore[arg-type]  # fmt: skip
        line = sum(1 for s in starts if s <= position)
        assert chain.failure is not None, position
        expected = {line, line + 1} if data[position] == ord("\n") else {line}
        assert chain.failure.line in expected, (position, chain.failure)


def test_a_dropped_or_reordered_record_breaks_the_chain_where_it_was(finished: Run, federation: Federation) -> None:
    records = lines(finished.out)
    dropped = walk(records[:1] + records[2:], federation.ca)  # type: ignore[arg-type]
    assert dropped.failure is not None and dropped.failure.line == 2 and "removed, inserted" in dropped.failure.problem
    swapped = walk([records[0], records[2], records[1]], federation.ca)  # type: ignore[arg-type]
    assert swapped.failure is not None and swapped.failure.line == 2
    assert walk(records[1:], federation.ca).failure.line == 1  # type: ignore[arg-type,union-attr]


def test_a_chain_checked_against_another_ca_fails_at_its_first_record(finished: Run) -> None:
    _, other = pki.make_ca("not the federation's")
    chain = walk(lines(finished.out), other)
    assert chain.failure is not None and chain.failure.line == 1
    assert "not issued by the federation's CA" in chain.failure.problem


def test_a_hospital_with_a_valid_certificate_that_signs_with_another_key_is_refused_and_recorded(
    tmp_path: Path, federation: Federation
) -> None:
    def forge(name: str, digest: bytes) -> bytes:
        return sign_update(federation.outsider if name == "hospital_c" else federation.hospitals[name], digest)

    run = signed_run(tmp_path, federation, rounds=1, signing=forge, min_fit=2)

    assert run.refusals and all("signature does not verify" in r for r in run.refusals)
    assert run.chain.failure is None
    record = run.chain.last_round(1)
    assert record is not None
    assert sorted(c.hospital for c in record.contributions if c.accepted) == ["hospital_a", "hospital_b"]
    refused = [c for c in record.contributions if not c.accepted]
    assert [c.hospital for c in refused] == ["hospital_c"] and "signature does not verify" in str(refused[0].reason)
    assert refused[0].update is not None and run.kept["hospital_c"] == []


def test_an_unsigned_update_over_tls_is_refused(tmp_path: Path, federation: Federation) -> None:
    run = signed_run(tmp_path, federation, rounds=1, min_fit=2,
                     signing=lambda name, digest: b"" if name == "hospital_b" else sign_update(
                         federation.hospitals[name], digest))  # fmt: skip
    assert any("is not signed" in r for r in run.refusals)
    record = run.chain.last_round(1)
    assert record is not None and [c.hospital for c in record.contributions if not c.accepted] == ["hospital_b"]


def test_a_resumed_run_continues_the_chain_and_verifies_end_to_end(tmp_path: Path, federation: Federation) -> None:
    signed_run(tmp_path, federation, rounds=2)
    (tmp_path / "model.safetensors").unlink()
    run = signed_run(tmp_path, federation, rounds=3, resume=True)

    assert run.chain.failure is None
    assert [(r.kind, r.round) for r in run.chain.records] == [("start", 0), ("round", 1), ("round", 2),
                                                              ("resume", 2), ("round", 3)]  # fmt: skip
    assert run.chain.model == model_digest(load_model(tmp_path)[0])


def test_resume_cuts_a_round_recorded_after_the_checkpoint_and_says_so(tmp_path: Path, federation: Federation) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", "f", federation.server, federation.ca)  # type: ignore[arg-type]
    audit.start("00" * 32, {})
    for number in (1, 2):  # round 2 was recorded, then the coordinator died before its checkpoint
        outcome = RoundOutcome(number, [], ["hospital_a"], None)  # type: ignore[arg-type]
        audit.round(outcome, model_in="00" * 32, model="00" * 32, task=None, strategy={}, secure=False, failed="x")
    with (tmp_path / "audit.jsonl").open("ab") as f:
        f.write(b'{"kind":"round","round":3,"torn')  # and a write it interrupted

    AuditLog(tmp_path / "audit.jsonl", "f", federation.server, federation.ca).resume(1, "00" * 32)  # type: ignore[arg-type]

    chain = walk(lines(tmp_path), federation.ca)  # type: ignore[arg-type]
    assert chain.failure is None and [(r.kind, r.round) for r in chain.records] == [("start", 0), ("round", 1),
                                                                                    ("resume", 1)]  # fmt: skip
    assert chain.records[2].dropped == 2


def test_resume_refuses_a_replaced_checkpoint_and_an_edited_chain(tmp_path: Path, federation: Federation) -> None:
    signed_run(tmp_path, federation, rounds=1)
    checkpoint = tmp_path / "checkpoint-round-000001.safetensors"
    original = checkpoint.read_bytes()
    model, _ = load_model(tmp_path)
    from safetensors.numpy import save_file

    save_file({k: np.asarray(v) * 2 if v.dtype.kind == "f" else np.asarray(v) for k, v in model.items()},
              str(checkpoint))  # fmt: skip
    with pytest.raises(ConfigError, match=r"checkpoint's model is not the model audit\.jsonl recorded for round 1"):
        signed_run(tmp_path, federation, rounds=2, resume=True)
    checkpoint.write_bytes(original)
    text = (tmp_path / "audit.jsonl").read_text().replace('"num_examples":10', '"num_examples":11', 1)
    (tmp_path / "audit.jsonl").write_text(text)
    with pytest.raises(ConfigError, match=r"audit.jsonl line 2 \(round 1\): .*signature does not verify"):
        signed_run(tmp_path, federation, rounds=2, resume=True)
