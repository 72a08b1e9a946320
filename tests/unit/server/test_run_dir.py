"""The coordinator's checkpoint and history repair: a crash at any point leaves a resumable run."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from medfed.common.errors import ConfigError
from medfed.server.run_dir import (
    CHECKPOINT_FILE,
    CHECKPOINT_MODEL,
    CHECKPOINT_STRATEGY,
    Checkpoint,
    RunDir,
    check_settings,
)
from medfed.server.strategy import StrategyState


def make(round_number: int) -> tuple[Checkpoint, dict[str, np.ndarray]]:
    checkpoint = Checkpoint(
        round=round_number,
        model_file=CHECKPOINT_MODEL.format(round_number),
        federation_id="f",
        data={},
        settings={"model": "cnn"},
        rng_state=[3, [1, 2], None],
        strategy={},
        privacy={},
        last_eval={},
    )
    return checkpoint, {"w": np.full(3, float(round_number), dtype=np.float32), "n": np.array(round_number)}


def test_a_checkpoint_round_trips(tmp_path: Path) -> None:
    checkpoint, state = make(4)

    RunDir(tmp_path).save_checkpoint(checkpoint, state)
    resumed = RunDir(tmp_path).load_checkpoint()
    loaded, loaded_state = resumed.checkpoint, resumed.model

    assert loaded == checkpoint
    assert np.array_equal(loaded_state["w"], state["w"]) and loaded_state["w"].dtype == np.float32
    assert loaded_state["n"].shape == () and loaded_state["n"].item() == 4  # 0-d stays 0-d


@pytest.mark.parametrize("crash_at", ["model rename", "checkpoint rename"])
def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    RunDir(tmp_path).save_checkpoint(*make(1))
    renames = {"model rename": 1, "checkpoint rename": 2}[crash_at]
    real_replace = os.replace
    calls = []

    def crashing_replace(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) == renames:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="power cut"):
        RunDir(tmp_path).save_checkpoint(*make(2))
    monkeypatch.setattr(os, "replace", real_replace)

    resumed = RunDir(tmp_path).load_checkpoint()
    loaded, state = resumed.checkpoint, resumed.model
    assert loaded.round == 1
    assert np.array_equal(state["w"], np.full(3, 1.0))


def test_older_model_files_are_removed_only_after_the_new_checkpoint_is_in_place(tmp_path: Path) -> None:
    for round_number in (1, 2, 3):
        RunDir(tmp_path).save_checkpoint(*make(round_number))

    assert sorted(p.name for p in tmp_path.glob("checkpoint-round-*")) == [CHECKPOINT_MODEL.format(3)]


def test_missing_or_damaged_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--resume: .* holds no checkpoint"):
        RunDir(tmp_path).load_checkpoint()
    RunDir(tmp_path).save_checkpoint(*make(1))
    (tmp_path / CHECKPOINT_MODEL.format(1)).write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="--resume: cannot read the checkpoint"):
        RunDir(tmp_path).load_checkpoint()
    (tmp_path / CHECKPOINT_FILE).write_text("{")
    with pytest.raises(ConfigError, match="--resume: cannot read the checkpoint"):
        RunDir(tmp_path).load_checkpoint()


def test_resumed_settings_must_match_except_rounds() -> None:
    check_settings({"model": "cnn", "lr": 0.001}, {"model": "cnn", "lr": 0.001, "rounds": 9})

    with pytest.raises(ConfigError, match="started with --model cnn, this command gives resnet18"):
        check_settings({"model": "cnn"}, {"model": "resnet18"})


def write_history(out: RunDir, lines: list[str]) -> None:
    out.directory.mkdir(parents=True, exist_ok=True)
    out.history_path.write_text("".join(line + "\n" for line in lines))


def rounds_in(out: RunDir) -> list[int]:
    return [json.loads(line)["round"] for line in out.history_path.read_text().splitlines()]


def test_history_keeps_each_checkpointed_round_once(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    # round 2 was written twice (a crash after its line, then a resumed run that crashed again) and round 3
    # was written but never checkpointed; the last line was torn by the crash
    lines = [json.dumps({"round": r, "n": i}) for i, r in enumerate((1, 2, 2, 3))] + ['{"round": 4, "acc']
    write_history(out, lines)

    out.truncate_history(2)

    assert rounds_in(out) == [1, 2]
    assert json.loads(out.history_path.read_text().splitlines()[1])["n"] == 1  # the first record of round 2


def test_history_with_a_gap_is_refused(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    write_history(out, [json.dumps({"round": 1}), json.dumps({"round": 3})])

    with pytest.raises(ConfigError, match=r"lacks rounds the checkpoint says are done \(\[2\]\)"):
        out.truncate_history(3)
    assert rounds_in(out) == [1, 3]  # nothing was rewritten


def test_the_strategys_tensors_are_checkpointed_beside_the_model_and_come_back_bit_identical(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    momentum = {"w": np.random.default_rng(0).standard_normal(5).astype(np.float32)}
    for round_number in (1, 2):
        checkpoint, state = make(round_number)
        run_dir.save_checkpoint(checkpoint, state, StrategyState({"steps": round_number}, momentum))

    resumed = run_dir.load_checkpoint()

    assert resumed.strategy.values == {"steps": 2}
    assert resumed.strategy.tensors["w"].tobytes() == momentum["w"].tobytes()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-round-*")) == [
        CHECKPOINT_MODEL.format(2), CHECKPOINT_STRATEGY.format(2)
    ]  # fmt: skip
