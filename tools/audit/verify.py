"""fed-audit verify: a run folder checked against its audit chain and the federation's CA.

The chain itself first (common/provenance/chain.py: every link, signature and certificate), then the
files it vouches for: the checkpoint's model is the one the chain recorded for its round, the final
``model.safetensors`` is the chain's last model, ``model.json`` names the chain's head, and
``history.jsonl`` credits each round to the hospitals the chain does. The first thing that does not
hold is named, with its file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load_file

from medfed.common.errors import MedfedError
from medfed.common.peer_text import quoted
from medfed.common.pki import common_name
from medfed.common.provenance.chain import Chain, walk
from medfed.common.provenance.digests import model_digest
from medfed.server.run_dir import AUDIT_FILE, CHECKPOINT_FILE, HISTORY_FILE, METADATA_FILE, MODEL_FILE, Checkpoint


class AuditFileError(MedfedError):
    """A file fed-audit was pointed at that it cannot read (not a failed verification)."""


@dataclass
class Verdict:
    held: list[str] = field(default_factory=list)
    """what was checked and held, one line each"""
    failure: str | None = None


def chain_lines(path: Path) -> list[bytes]:
    """A chain file's lines without their newlines (a final newline ends the last line, it starts none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuditFileError(f"{path} does not exist (is this a run folder of medfed 0.2 or newer?)") from None
    except OSError as exc:
        raise AuditFileError(f"cannot read {path}: {exc.strerror}") from None
    lines = data.split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def load_chain(folder: Path, ca: x509.Certificate | None) -> Chain:
    return walk(chain_lines(folder / AUDIT_FILE), ca)


def _model_at(chain: Chain, round_number: int) -> str | None:
    """The global model's digest the chain holds after round ``round_number`` (its last record of it)."""
    found = [r.model for r in chain.records if r.round == round_number and r.kind in ("round", "resume", "start")]
    return found[-1] if found else None


def _digest_of(path: Path) -> str:
    try:
        return model_digest(load_file(str(path)))
    except (SafetensorError, OSError) as exc:
        raise _Failed(f"{path.name} cannot be read as a model ({str(exc).splitlines()[0]})") from None


class _Failed(MedfedError):
    pass


def _chain_summary(chain: Chain, ca: x509.Certificate | None) -> str:
    rounds = [r for r in chain.records if r.kind == "round"]
    numbers = sorted({r.round for r in rounds})
    span = f"rounds {numbers[0]}-{numbers[-1]}" if numbers else "no round yet"
    if not chain.signed:
        return f"{AUDIT_FILE}: {len(chain.records)} records, {span}, linked; NOT signed (an --insecure run)"
    against = f"the CA {quoted(common_name(ca), 80)}" if ca is not None else "the certificates in the chain only"
    signatures = sum(c.accepted for r in rounds for c in r.contributions)
    return (
        f"{AUDIT_FILE}: {len(chain.records)} records, {span}, linked and signed by the coordinator; "
        f"{signatures} hospital signature(s) over accepted updates; every certificate checked against {against}"
    )


def _check_files(folder: Path, chain: Chain, verdict: Verdict) -> None:
    checkpoint_path = folder / CHECKPOINT_FILE
    if checkpoint_path.exists():
        try:
            checkpoint = Checkpoint.model_validate_json(checkpoint_path.read_bytes())
        except (ValidationError, OSError) as exc:
            raise _Failed(f"{CHECKPOINT_FILE} cannot be read ({str(exc).splitlines()[0]})") from None
        expected = _model_at(chain, checkpoint.round)
        if expected is None:
            raise _Failed(f"{CHECKPOINT_FILE} is of round {checkpoint.round}, which the chain does not record")
        if _digest_of(folder / checkpoint.model_file) != expected:
            raise _Failed(f"{checkpoint.model_file} is not the model the chain recorded for round {checkpoint.round}")
        verdict.held.append(f"{checkpoint.model_file}: the chain's model after round {checkpoint.round}")
    model_path = folder / MODEL_FILE
    if not model_path.exists():
        verdict.held.append(f"no {MODEL_FILE} yet: the run has not finished")
        return
    if _digest_of(model_path) != chain.model:
        raise _Failed(f"{MODEL_FILE} is not the chain's last model (the model after its last record)")
    verdict.held.append(f"{MODEL_FILE}: the chain's last model")
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
        head = metadata["audit"]["head"]
    except (OSError, ValueError, KeyError, TypeError):
        raise _Failed(f"{METADATA_FILE} names no audit chain head") from None
    if head != chain.head:
        raise _Failed(f"{METADATA_FILE} names chain head {str(head)[:16]}…, but the chain ends at {chain.head}")
    verdict.held.append(f"{METADATA_FILE}: names the chain's head")


def _check_history(folder: Path, chain: Chain, verdict: Verdict) -> None:
    path = folder / HISTORY_FILE
    if not path.exists():
        return
    credited: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
            credited[int(record["round"])] = sorted(record.get("clients", []))
        except (ValueError, KeyError, TypeError):
            raise _Failed(f"{HISTORY_FILE} line {number} is not a round's record") from None
    for number, clients in sorted(credited.items()):
        entry = chain.last_round(number)
        if entry is None:
            continue  # a round from before the chain began (a run resumed from an older version)
        accepted = sorted(c.hospital for c in entry.contributions if c.accepted)
        if clients != accepted:
            raise _Failed(f"{HISTORY_FILE} credits round {number} to {clients}, the chain to {accepted}")
    verdict.held.append(f"{HISTORY_FILE}: every round credited to the hospitals the chain credits")


def verify_run(folder: Path, ca: x509.Certificate | None, *, allow_unsigned: bool = False) -> Verdict:
    verdict = Verdict()
    chain = load_chain(folder, ca)
    if chain.failure is not None:
        verdict.failure = f"{AUDIT_FILE} {chain.failure}"
        return verdict
    if not chain.records:
        verdict.failure = f"{AUDIT_FILE} is empty"
        return verdict
    if chain.records[0].kind == "resume":
        verdict.held.append(f"the chain starts at round {chain.records[0].round}: an older version ran the rounds "
                            "before it, and nothing here vouches for them")  # fmt: skip
    verdict.held.insert(0, _chain_summary(chain, ca))
    if not chain.signed and not allow_unsigned:
        verdict.failure = (
            f"{AUDIT_FILE} is intact but unsigned (an --insecure run): it proves nothing about who wrote it "
            "(--allow-unsigned checks the rest)"
        )
        return verdict
    try:
        _check_files(folder, chain, verdict)
        _check_history(folder, chain, verdict)
    except _Failed as failed:
        verdict.failure = str(failed)
    return verdict
