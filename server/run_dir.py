"""A run's folder (``--out``): every file name in it, and reading and writing each one.

- ``history.jsonl``: one RoundRecord per round (server/history.py), appended and fsynced as each ends;
- ``checkpoint.json`` and ``checkpoint-round-NNNNNN.safetensors``: everything a restarted coordinator
  needs to continue. After every completed round (after its history line) the global model goes to a
  file named for its round, then checkpoint.json (which names that file) replaces the previous one by
  an atomic rename; only then are older model files removed, so a crash at any point leaves a
  checkpoint.json that names a complete model file;
- ``checkpoint-round-NNNNNN.strategy.safetensors``: the strategy's tensors, for strategies with any;
- ``round-updates/``: a robust strategy's store of the open round's updates, deleted as it closes;
- ``receiving/``: uploads being received into files (server/spool.py), each deleted once folded;
- ``model.safetensors`` and ``model.json``: the final model and what it is (never pickle);
- ``audit.jsonl``: the signed, hash-chained record of who contributed what to every round
  (server/audit_log.py), whose last record holds the final model's digest;
- the report's files (server/report.py writes them under the names given here).

Nothing here overwrites a previous run silently: ``prepare`` refuses a folder holding one unless told.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from medfed.common import files
from medfed.common.errors import ConfigError, MedfedError
from medfed.common.tensors import StateDict
from medfed.server.history import RoundRecord
from medfed.server.strategy import StrategyState

HISTORY_FILE = "history.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_MODEL = "checkpoint-round-{:06d}.safetensors"
CHECKPOINT_STRATEGY = "checkpoint-round-{:06d}.strategy.safetensors"
"""the strategy's tensors (server momentum, Adam's moments), when it has any"""
UPDATE_STORE = "round-updates"
"""a robust strategy's disk-backed store of the open round's updates (deleted when the round closes)"""
RECEIVING = "receiving"
"""uploads being received into files, beyond the ones held in memory (server/spool.py; each deleted once folded)"""
MODEL_FILE = "model.safetensors"
METADATA_FILE = "model.json"
REPORT_FILE = "report.md"
CURVES_FILE = "accuracy_loss.png"
PER_CLASS_FILE = "per_class_accuracy.png"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
REPORT_FILES = (REPORT_FILE, CURVES_FILE, PER_CLASS_FILE, CONFUSION_PNG, CONFUSION_CSV)
AUDIT_FILE = "audit.jsonl"
REMOVED_FILE = "removed.json"
"""hospitals an operator removed (fed-admin remove): refused for the rest of the run and its resumptions"""
RUN_FILES = (HISTORY_FILE, MODEL_FILE, METADATA_FILE, CHECKPOINT_FILE, AUDIT_FILE)
CHECKPOINT_FORMAT = "medfed-checkpoint/1"
MODEL_FORMAT = "medfed-model/1"


class ModelFileError(MedfedError, ValueError):
    """A model folder that cannot be read."""


class Checkpoint(BaseModel):
    """What the driver needs to pick up after round ``round``; ``settings`` must match on resume."""

    model_config = ConfigDict(extra="forbid")

    format: str = CHECKPOINT_FORMAT
    round: int
    model_file: str
    federation_id: str
    data: dict[str, Any]
    settings: dict[str, Any]
    rng_state: list[Any]
    strategy: dict[str, Any]
    privacy: dict[str, Any]
    last_eval: dict[str, Any]
    strategy_file: str | None = None
    """the strategy's tensors (CHECKPOINT_STRATEGY), None when it has none"""


@dataclass(frozen=True)
class Resumed:
    """What a resumed run starts from: the last checkpoint, its global model and the strategy's state."""

    checkpoint: Checkpoint
    model: StateDict
    strategy: StrategyState


def _save_tensors(path: Path, state: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: np.asarray(v, order="C") for k, v in state.items()}  # keeps 0-d arrays 0-d
    with files.replacing(path, durable=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_model(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A final model and its metadata (``model.safetensors``, ``model.json``)."""
    model_path, meta_path = directory / MODEL_FILE, directory / METADATA_FILE
    try:
        state = load_file(str(model_path))
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise ModelFileError(f"{exc.filename} does not exist") from None
    except (SafetensorError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read the model in {directory}: {exc}") from None
    return state, metadata


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


class RunDir:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self, *, force: bool) -> None:
        """Refuse to mix a new run into an old one's files unless ``force`` says to replace them."""
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"--out: {self.directory} exists and is not a folder")
        existing = [name for name in RUN_FILES if (self.directory / name).exists()]
        if existing and not force:
            raise ConfigError(
                f"--out: {self.directory} already holds a run ({', '.join(existing)}); "
                "continue it with --resume, choose another --out, or pass --force to replace it"
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name in (*existing, *REPORT_FILES, REMOVED_FILE):
                (self.directory / name).unlink(missing_ok=True)
            for old in self.directory.glob("checkpoint-round-*.safetensors"):
                old.unlink()
            self.clear_update_store()
        except OSError as exc:
            raise ConfigError(f"--out: cannot use {self.directory}: {exc.strerror}") from None

    def nothing_completed(self) -> bool:
        """No round of a run here was checkpointed (a history line without its checkpoint is a round that
        will be run again): --resume then starts at round 1, so a restart policy can always pass it."""
        return not any((self.directory / name).exists() for name in (CHECKPOINT_FILE, MODEL_FILE, METADATA_FILE))

    # ----- history -------------------------------------------------------------------------------

    @property
    def history_path(self) -> Path:
        return self.directory / HISTORY_FILE

    def history(self) -> list[RoundRecord]:
        if not self.history_path.exists():
            return []
        lines = self.history_path.read_text().splitlines()
        return [RoundRecord.from_json(json.loads(line)) for line in lines if line.strip()]

    def append_history(self, record: RoundRecord) -> None:
        with open(self.history_path, "a") as f:
            f.write(json.dumps(record.to_json()) + "\n")
            files.fsync_file(f)

    def truncate_history(self, rounds: int) -> None:
        """Keep each round up to ``rounds`` once, in order: a crash between a round's history line and
        its checkpoint left a line for a round the resumed run will do again (and a torn last line)."""
        kept: dict[int, str] = {}
        lines = self.history_path.read_text().splitlines() if self.history_path.exists() else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    continue  # the write a crash interrupted
                raise ConfigError(f"--resume: {self.history_path} line {number} is not JSON") from None
            if isinstance(record, dict) and isinstance(record.get("round"), int) and record["round"] <= rounds:
                kept.setdefault(record["round"], line)
        if sorted(kept) != list(range(1, rounds + 1)):
            raise ConfigError(
                f"--resume: {self.history_path} lacks rounds the checkpoint says are done "
                f"({sorted(set(range(1, rounds + 1)) - kept.keys())[:5]})"
            )
        files.write_text(self.history_path, "".join(kept[r] + "\n" for r in sorted(kept)), durable=True)

    @property
    def audit_path(self) -> Path:
        return self.directory / AUDIT_FILE

    # ----- hospitals the operator removed --------------------------------------------------------

    def removed(self) -> dict[str, str]:
        """{hospital: why} for the hospitals removed from this run."""
        path = self.directory / REMOVED_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--resume: {path} cannot be read ({exc}); fix or delete it") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ConfigError(f"--resume: {path} is not a JSON object of hospital names and reasons")
        return data

    def save_removed(self, removed: Mapping[str, str]) -> None:
        files.write_text(self.directory / REMOVED_FILE, json.dumps(dict(sorted(removed.items())), indent=1) + "\n",
                         durable=True)  # fmt: skip

    # ----- checkpoints and the final model ---------------------------------------------------------

    @property
    def update_store(self) -> Path:
        return self.directory / UPDATE_STORE

    @property
    def receiving(self) -> Path:
        return self.directory / RECEIVING

    def clear_update_store(self) -> None:
        """Remove what a round left on disk when the coordinator was stopped in it: a robust strategy's
        store, uploads half received into files."""
        shutil.rmtree(self.update_store, ignore_errors=True)
        shutil.rmtree(self.receiving, ignore_errors=True)

    def save_checkpoint(
        self, checkpoint: Checkpoint, state: Mapping[str, np.ndarray], strategy: StrategyState | None = None
    ) -> None:
        """``checkpoint.strategy`` and ``strategy_file`` are filled in from ``strategy``."""
        values = dict(strategy.values) if strategy is not None else {}
        strategy_file = None
        if strategy is not None and strategy.tensors:
            strategy_file = CHECKPOINT_STRATEGY.format(checkpoint.round)
            _save_tensors(self.directory / strategy_file, strategy.tensors)
        checkpoint = checkpoint.model_copy(update={"strategy": values, "strategy_file": strategy_file})
        _save_tensors(self.directory / checkpoint.model_file, state)
        files.write_json(self.directory / CHECKPOINT_FILE, checkpoint.model_dump(mode="json"), durable=True)
        for old in self.directory.glob("checkpoint-round-*.safetensors"):
            if old.name not in (checkpoint.model_file, strategy_file):
                old.unlink(missing_ok=True)

    def load_checkpoint(self) -> Resumed:
        """The last complete checkpoint; ConfigError (naming --resume) when there is none."""
        path = self.directory / CHECKPOINT_FILE
        if not path.exists():
            raise ConfigError(
                f"--resume: {self.directory} holds no checkpoint ({CHECKPOINT_FILE}); start without --resume"
            )
        try:
            checkpoint = Checkpoint.model_validate_json(path.read_bytes())
            if checkpoint.format != CHECKPOINT_FORMAT:
                raise ConfigError(f"--resume: {path} has format {checkpoint.format!r}, expected {CHECKPOINT_FORMAT!r}")
            state = load_file(str(self.directory / checkpoint.model_file))
            tensors = load_file(str(self.directory / checkpoint.strategy_file)) if checkpoint.strategy_file else {}
        except (OSError, ValidationError, SafetensorError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"--resume: cannot read the checkpoint in {self.directory}: {str(exc).splitlines()[0]}"
            ) from None
        return Resumed(checkpoint, state, StrategyState(checkpoint.strategy, tensors))

    def save_model(self, state: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> Path:
        """The final model (``model.safetensors``) and what it is (``model.json``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        model_path = self.directory / MODEL_FILE
        _save_tensors(model_path, state, metadata={"format": MODEL_FORMAT})
        files.write_json(self.directory / METADATA_FILE, dict(metadata), durable=True)
        return model_path
