"""What a run leaves in ``--out``: history.jsonl (one JSON object per round), the final model
(model.safetensors + model.json) and nothing else that a later run could silently overwrite."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medfed.common.checkpoint import METADATA_FILE, MODEL_FILE, save_model
from medfed.common.errors import ConfigError
from medfed.server.report import REPORT_FILES

HISTORY_FILE = "history.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
RUN_FILES = (HISTORY_FILE, MODEL_FILE, METADATA_FILE, CHECKPOINT_FILE)


class RunOutput:
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
            for name in (*existing, *REPORT_FILES):
                (self.directory / name).unlink(missing_ok=True)
            for old in self.directory.glob("checkpoint-round-*.safetensors"):
                old.unlink()
        except OSError as exc:
            raise ConfigError(f"--out: cannot use {self.directory}: {exc.strerror}") from None

    def nothing_completed(self) -> bool:
        """No round of a run here was checkpointed (a history line without its checkpoint is a round that
        will be run again): --resume then starts at round 1, so a restart policy can always pass it."""
        return not any((self.directory / name).exists() for name in (CHECKPOINT_FILE, MODEL_FILE, METADATA_FILE))

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
        tmp = self.history_path.with_name(f".{HISTORY_FILE}.tmp")
        with open(tmp, "w") as f:
            f.write("".join(kept[r] + "\n" for r in sorted(kept)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.history_path)

    @property
    def history_path(self) -> Path:
        return self.directory / HISTORY_FILE

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line.strip()]

    def append_history(self, record: Mapping[str, Any]) -> None:
        with open(self.history_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def save_model(self, state: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> Path:
        model_path, _ = save_model(self.directory, state, metadata)
        return model_path
