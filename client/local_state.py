"""What a hospital keeps between rounds for the strategies that need it: SCAFFOLD's control variate and
FedBN's own normalisation layers. Like the privacy ledger they live in the hospital's data folder (in
``medfed-state/``, or fed-client's ``--state-dir``), one safetensors file per federation and kind,
written durably, so that a hospital restarted mid-federation continues from where it was, and a new
federation starts afresh.

The files hold arrays and a few strings only (safetensors: no pickle), and what is read back is checked
against the model before it is used, since anyone with access to the folder could replace a file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from medfed.common.errors import MedfedError
from medfed.common.files import replacing
from medfed.common.tensors import StateDict

STATE_FOLDER = "medfed-state"


class LocalStateError(MedfedError, ValueError):
    """A kept file that cannot be read or written, or no longer fits the federation's model."""


@dataclass(frozen=True)
class Kept:
    round: int
    """the round that wrote it"""
    tensors: StateDict


class LocalState:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, federation: str, kind: str) -> Path:
        # the federation id comes from the coordinator: hashed, it cannot name a path of its choosing
        digest = hashlib.sha256(federation.encode()).hexdigest()[:16]
        return self.folder / f"{kind}-{digest}.safetensors"

    def load(self, federation: str, kind: str) -> Kept | None:
        path = self.path(federation, kind)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            if meta.get("federation") != federation:
                raise LocalStateError(f"{path} belongs to another federation")
            return Kept(int(meta["round"]), tensors)
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LocalStateError(f"cannot read {path} ({reason}); move it away to start afresh") from None

    def save(self, federation: str, kind: str, round_number: int, tensors: Mapping[str, np.ndarray]) -> None:
        path = self.path(federation, kind)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with replacing(path, durable=True) as tmp:
                arrays = {name: np.array(value, order="C") for name, value in tensors.items()}  # keeps 0-d shapes
                save_file(arrays, str(tmp), metadata={"federation": federation, "round": str(round_number)})
        except OSError as exc:
            reason = exc.strerror or exc
            raise LocalStateError(
                f"cannot write {path} ({reason}): this strategy keeps tensors between rounds; make the folder "
                "writable or give fed-client --state-dir"
            ) from None


def fitting(kept: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], what: str, path: Path) -> StateDict:
    """``kept`` if it holds exactly the tensors of ``expected`` with their shapes and dtypes."""
    if kept.keys() != expected.keys():
        raise LocalStateError(f"{path} holds other tensors than this round's {what}; move it away to start afresh")
    for name, value in expected.items():
        if kept[name].shape != value.shape or kept[name].dtype != value.dtype:
            raise LocalStateError(f"{path}: {what} tensor {name} has another shape or type than the model's")
    return dict(kept)
