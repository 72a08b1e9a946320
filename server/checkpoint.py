"""The coordinator's checkpoint: everything a restarted fed-server needs to continue a run.

Written after every completed round, after that round's history line. The global model goes to a file
named for its round, then ``checkpoint.json`` (which names that file) replaces the previous one by an
atomic rename; only then are older model files removed. A crash at any point leaves a checkpoint.json
that names a complete model file, so the previous checkpoint stays loadable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from medfed.common.checkpoint import write_json
from medfed.common.errors import ConfigError
from medfed.server.output import CHECKPOINT_FILE

MODEL_PATTERN = "checkpoint-round-{:06d}.safetensors"
FORMAT = "medfed-checkpoint/1"


class Checkpoint(BaseModel):
    """What the driver needs to pick up after round ``round``; ``settings`` must match on resume."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    round: int
    model_file: str
    federation_id: str
    data: dict[str, Any]
    settings: dict[str, Any]
    rng_state: list[Any]
    strategy: dict[str, Any]
    privacy: dict[str, Any]
    last_eval: dict[str, Any]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, checkpoint: Checkpoint, state: Mapping[str, np.ndarray]) -> None:
    model_path = directory / checkpoint.model_file
    tmp = model_path.with_name(f".{model_path.name}.tmp")
    save_file({k: np.asarray(v, order="C") for k, v in state.items()}, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, model_path)
    write_json(directory / CHECKPOINT_FILE, checkpoint.model_dump(mode="json"))
    _fsync_dir(directory)
    for old in directory.glob("checkpoint-round-*.safetensors"):
        if old.name != checkpoint.model_file:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> tuple[Checkpoint, dict[str, np.ndarray]]:
    """The last complete checkpoint in ``directory``; ConfigError (naming --resume) when there is none."""
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        raise ConfigError(f"--resume: {directory} holds no checkpoint ({CHECKPOINT_FILE}); start without --resume")
    try:
        checkpoint = Checkpoint.model_validate_json(path.read_bytes())
        if checkpoint.format != FORMAT:
            raise ConfigError(f"--resume: {path} has format {checkpoint.format!r}, expected {FORMAT!r}")
        state = load_file(str(directory / checkpoint.model_file))
    except (OSError, ValidationError, SafetensorError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--resume: cannot read the checkpoint in {directory}: {str(exc).splitlines()[0]}") from None
    return checkpoint, state


def check_settings(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """A resumed run must train the same model the same way. Only the training settings in both are
    compared: a checkpoint of an older version that also fixed operational settings (such as
    --clients-per-round) can be resumed with other values for those."""
    for key in sorted(saved.keys() & now.keys()):
        if now[key] != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"--resume: the run was started with {flag} {saved[key]}, this command gives {now[key]}; resume "
                "with the same training settings (--rounds, --min-clients, --min-fit, --clients-per-round, "
                "--over-select and the timeouts may change)"
            )
