"""What a hospital signs and keeps of each update it sends (issue 19's provenance).

Before an update leaves, the hospital signs its digest with the key of its TLS certificate; the
coordinator refuses an unsigned one and credits a signed one, in the audit chain, to the certificate
that signed it. For each accepted update the coordinator answers with a signed receipt. The hospital
checks it (the coordinator's certificate from the federation's CA, its signature, the digest it names)
and keeps it with what it sent, as digests only, in ``receipts-<federation>.jsonl`` in its state folder
(``DATA/medfed-state/`` or ``--state-dir``): ``fed-audit receipt`` proves the contribution against the
run's chain with that file alone.

Keeping receipts never stops training: a folder that cannot be written is said once, at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from medfed.client.identity import Identity
from medfed.common import files
from medfed.common.messages import ReceivedTask, UpdateHeader
from medfed.common.peer_text import cleaned
from medfed.common.provenance.digests import model_digest, update_digest
from medfed.common.provenance.receipts import Receipt, SentUpdate
from medfed.common.provenance.records import now_iso
from medfed.common.provenance.signing import b64, sign_update
from medfed.common.tensors import EncodedModel

log = logging.getLogger("medfed.client")

RECEIPTS_FILE = "receipts-{}.jsonl"


def receipt_problem(receipt: Receipt, sent: SentUpdate, identity: Identity) -> str | None:
    """Why a receipt does not prove that ``sent`` was accepted (None: it does)."""
    if (receipt.federation_id, receipt.round, receipt.hospital) != (sent.federation_id, sent.round, sent.hospital):
        return "it is for another federation, round or hospital"
    if receipt.update != sent.update or receipt.num_examples != sent.num_examples:
        return "it names another update than the one sent"
    return receipt.problem(identity.ca)


class Provenance:
    def __init__(self, identity: Identity, name: str, folder: Path) -> None:
        self._identity, self._signer, self._name, self.folder = identity, identity.signer, name, folder

    def check_folder(self) -> bool:
        """Say once, at start-up, when receipts cannot be kept (a read-only data folder)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(self.folder, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            log.warning("cannot write to %s: this hospital's receipts will not be kept (give --state-dir a "
                        "writable folder)", self.folder)  # fmt: skip
        return writable

    def path(self, federation: str) -> Path:
        # the federation id comes from the coordinator: hashed, it cannot name a path of its choosing
        return self.folder / RECEIPTS_FILE.format(hashlib.sha256(federation.encode()).hexdigest()[:16])

    def sign(self, federation: str, header: UpdateHeader, encoded: EncodedModel) -> tuple[UpdateHeader, bytes]:
        """The header with the hospital's signature over the update's digest, and that digest."""
        digest = update_digest(federation, header.round, header.num_examples, encoded.layout, encoded.buffer,
                               delta=header.delta)  # fmt: skip
        return replace(header, signature=sign_update(self._signer, digest)), digest

    def keep(self, federation: str, task: ReceivedTask, header: UpdateHeader, digest: bytes,
             receipt: Receipt | None) -> None:  # fmt: skip
        """Check the coordinator's receipt and keep it with digests of what was received and sent."""
        sent = SentUpdate(federation, header.round, self._name, model_digest(task.state), digest.hex(),
                          header.num_examples, b64(header.signature), now_iso(), receipt)  # fmt: skip
        if receipt is None:
            log.warning("round %d: the coordinator accepted the update without a receipt", header.round)
        elif (problem := receipt_problem(receipt, sent, self._identity)) is not None:
            log.warning("round %d: the coordinator's receipt does not hold (%s); it is kept without it",
                        header.round, cleaned(problem))  # fmt: skip
            sent = replace(sent, receipt=None)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.path(federation), "a") as f:
                f.write(json.dumps(sent.to_json(), sort_keys=True) + "\n")
                files.fsync_file(f)
        except OSError as exc:
            log.warning("round %d: cannot keep the receipt in %s (%s)", header.round, self.folder, exc.strerror)
