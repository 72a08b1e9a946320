"""Models on disk: safetensors for the tensors and a JSON file for what they are (never pickle).

Both files are written under temporary names, fsynced and renamed, so a crash never leaves a
half-written model behind a valid name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

MODEL_FILE = "model.safetensors"
METADATA_FILE = "model.json"


class CheckpointError(ValueError):
    pass


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def save_model(directory: Path, state: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.asarray(v, order="C") for k, v in state.items()}  # keeps 0-d arrays 0-d
    model_path, meta_path = directory / MODEL_FILE, directory / METADATA_FILE
    _atomic_write(model_path, lambda p: save_file(tensors, str(p), metadata={"format": "medfed-model/1"}))
    write_json(meta_path, metadata)
    return model_path, meta_path


def load_model(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    model_path, meta_path = directory / MODEL_FILE, directory / METADATA_FILE
    try:
        state = load_file(str(model_path))
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{exc.filename} does not exist") from None
    except (SafetensorError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the model in {directory}: {exc}") from None
    return state, metadata
