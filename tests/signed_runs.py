"""Signed runs in process, for the provenance tests: the driver with three hospitals (threads) that sign
their updates as fed-client does and keep what they sent with the coordinator's receipts, and a
coordinator that writes a signed audit chain."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medfed.common import pki
from medfed.common.data.folders import DatasetInfo
from medfed.common.provenance.chain import Chain, walk
from medfed.common.provenance.digests import model_digest, update_digest
from medfed.common.provenance.receipts import SentUpdate
from medfed.common.provenance.records import now_iso
from medfed.common.provenance.signing import Signer, b64, sign_update
from medfed.common.tensors import encode, from_chunks
from medfed.server.audit_log import AuditLog
from medfed.server.config import ServerConfig
from medfed.server.coordinator import Coordinator
from medfed.server.driver import run_federation
from medfed.server.errors import InvalidUpdate
from medfed.server.rounds import Finished, Task
from medfed.server.run_dir import RunDir
from tests.helpers import InProcessModels

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))
HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")


@dataclass
class Federation:
    ca: object
    server: Signer
    hospitals: dict[str, Signer]
    outsider: Signer
    """a key no certificate of the federation belongs to"""


def make_federation() -> Federation:
    ca_key, ca = pki.make_ca()
    other_key, other_ca = pki.make_ca("another CA")
    return Federation(
        ca, Signer(*pki.issue(ca_key, ca, "server", server_hosts=["localhost"])),
        {name: Signer(*pki.issue(ca_key, ca, name)) for name in HOSPITALS},
        Signer(*pki.issue(other_key, other_ca, "hospital_a")),
    )  # fmt: skip


Signing = Callable[[str, bytes], bytes]


@dataclass
class Run:
    out: Path
    chain: Chain
    kept: dict[str, list[SentUpdate]] = field(default_factory=dict)
    """what each hospital kept: its sent updates with their receipts"""
    refusals: list[str] = field(default_factory=list)


def _hospital(coordinator: Coordinator, name: str, signer: Signer, kept: list[SentUpdate], refusals: list[str],
              signing: Signing | None) -> threading.Thread:  # fmt: skip
    """Joins, then answers each task with the model it received, moved a little, signed as fed-client does."""
    session = coordinator.join(name, 10, INFO)

    def loop() -> None:
        while True:
            task = coordinator.next_instruction(session, timeout=5)
            if isinstance(task, Finished):
                return
            if not isinstance(task, Task):
                continue
            received = from_chunks(task.payload.layout, task.payload.chunks())
            state = {k: (v + 0.01 * task.round).astype(v.dtype) if v.dtype.kind == "f" else v
                     for k, v in received.items()}  # fmt: skip
            encoded = encode(state)
            digest = update_digest(coordinator.federation_id, task.round, 10, encoded.layout, encoded.buffer,
                                   delta=False)  # fmt: skip
            signature = signing(name, digest) if signing else sign_update(signer, digest)
            try:
                with coordinator.begin_update(session, task.round, 10, {}, encoded.layout, caller=name,
                                              signature=signature, certificate=signer.certificate) as up:  # fmt: skip
                    receipt = up.commit(encoded.tensors(), digest)
            except InvalidUpdate as exc:  # final for fed-client (INVALID_ARGUMENT): it leaves
                refusals.append(str(exc))
                coordinator.leave(session, caller=name, reason=str(exc))
                return
            kept.append(SentUpdate(coordinator.federation_id, task.round, name, model_digest(received), digest.hex(),
                                   10, b64(signature), now_iso(), receipt))  # fmt: skip

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def signed_run(out: Path, federation: Federation, *, rounds: int = 2, resume: bool = False,
               signing: Signing | None = None, min_fit: int | None = None) -> Run:  # fmt: skip
    """An in-process federation of three hospitals whose coordinator keeps a signed audit chain."""
    cfg = ServerConfig.model_validate({"rounds": rounds, "min_clients": 3, "local_epochs": 0, "out": out,
                                       "insecure": True, "seed": 1, "min_fit": min_fit})  # fmt: skip
    run_dir = RunDir(out)
    resumed = run_dir.load_checkpoint() if resume else None
    if resumed is None:
        run_dir.prepare(force=False)
    federation_id = resumed.checkpoint.federation_id if resumed else "fed-test"
    audit = AuditLog(run_dir.audit_path, federation_id, federation.server, federation.ca)  # type: ignore[arg-type]
    coordinator = Coordinator(data_info=INFO, federation_id=federation_id, receipts=audit, heartbeat_timeout=30)
    result = Run(out, Chain())
    threads = []
    for name in HOSPITALS:
        result.kept[name] = []
        threads.append(_hospital(coordinator, name, federation.hospitals[name], result.kept[name], result.refusals,
                                 signing))  # fmt: skip
    if resumed is not None:
        run_dir.truncate_history(resumed.checkpoint.round)
    run_federation(cfg, coordinator, run_dir, InProcessModels("cnn"), resumed, audit=audit)
    for thread in threads:
        thread.join(timeout=10)
    result.chain = walk(lines(out), federation.ca)  # type: ignore[arg-type]
    return result


def lines(out: Path) -> list[bytes]:
    return (out / "audit.jsonl").read_bytes().split(b"\n")[:-1]
