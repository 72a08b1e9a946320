"""Bad input ends every command with a one-line reason and a non-zero status, never a traceback."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medfed.common.data.partition import partition_to_folders
from tests.helpers import run_cli, synthetic_dataset


def assert_one_line_error(result: subprocess.CompletedProcess[str], prog: str, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    partition_to_folders(synthetic_dataset(), root, clients=2, scheme="iid")
    return root


def test_client_with_a_missing_data_folder(tmp_path: Path) -> None:
    result = run_cli("medfed.client", "--data", str(tmp_path / "nowhere"), "--server", "127.0.0.1:1", "--insecure")

    assert_one_line_error(result, "fed-client", "does not exist", "nowhere")
    assert result.returncode == 2


def test_client_with_labels_out_of_range(tmp_path: Path, data: Path) -> None:
    import numpy as np

    folder = tmp_path / "h"
    folder.mkdir()
    (folder / "manifest.json").write_text((data / "hospital_a" / "manifest.json").read_text())
    np.savez(folder / "data.npz", train_images=np.zeros((4, 12, 12), np.uint8), train_labels=np.array([0, 1, 2, 7]))

    result = run_cli("medfed.client", "--data", str(folder), "--server", "127.0.0.1:1", "--insecure")

    assert_one_line_error(result, "fed-client", "train_labels has value 7 outside 0..3")


def test_client_gives_up_on_an_unreachable_server_after_max_wait(data: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        started = time.monotonic()
        result = run_cli(
            "medfed.client",
            "--data",
            str(data / "hospital_a"),
            "--server",
            f"127.0.0.1:{port}",
            "--insecure",
            "--max-wait",
            "3",
        )
        elapsed = time.monotonic() - started

    assert_one_line_error(result, "fed-client", "cannot reach the coordinator", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "retrying in" in result.stderr  # it did back off and retry before giving up
    assert elapsed < 60


def test_server_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_cli("medfed.server", "--insecure", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "o"))

    assert_one_line_error(result, "fed-server", f"cannot listen on 127.0.0.1:{port}", "in use")
    assert not (tmp_path / "o").exists()  # nothing was touched


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--insecure", "--rounds", "0"], ["--rounds", "greater than or equal to 1"]),
        (["--rounds", "2"], ["--insecure"]),
        (["--insecure", "--address", "localhost"], ["--address", "HOST:PORT"]),
        (["--insecure", "--test-data", "/nonexistent/test"], ["/nonexistent/test", "does not exist"]),
        (["--insecure", "--pretrained", "/nonexistent/r18.pth"], ["--pretrained", "never downloaded"]),
        (["--insecure", "--dp-central", "--dp-clip", "1", "--dp-noise-multiplier", "1"], ["--model cnn", "BatchNorm"]),
        (["--insecure", "--dp-local", "--dp-clip", "-1", "--dp-noise-multiplier", "1"], ["--dp-clip"]),
        (
            [
                "--insecure",
                "--model",
                "cnn_gn",
                "--dp-central",
                "--dp-clip",
                "1",
                "--dp-noise-multiplier",
                "1",
                "--rounds",
                "50",
                "--dp-target-epsilon",
                "2",
            ],
            ["--dp-target-epsilon 2: 50 rounds would spend", "at most 0 round(s) fit"],
        ),
    ],
)
def test_server_refuses_bad_settings(args: list[str], fragments: list[str], tmp_path: Path) -> None:
    result = run_cli("medfed.server", *args, "--out", str(tmp_path / "o"))

    assert_one_line_error(result, "fed-server", *fragments)
    assert result.returncode == 2


def test_server_refuses_unknown_config_keys_and_an_out_folder_with_a_run(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("roundz = 3\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / "history.jsonl").write_text('{"round": 1}\n')

    bad_key = run_cli("medfed.server", "--insecure", "--config", str(config))
    used_out = run_cli("medfed.server", "--insecure", "--address", "127.0.0.1:0", "--out", str(out))

    assert_one_line_error(bad_key, "fed-server", "unknown setting 'roundz' in the config file (did you mean rounds?)")
    assert_one_line_error(used_out, "fed-server", "already holds a run", "--force")
    assert (out / "history.jsonl").read_text() == '{"round": 1}\n'  # nothing lost


def test_partition_with_an_unknown_source(tmp_path: Path) -> None:
    result = run_cli("medfed.tools.partition", "--source", "nosuchset", "--out", str(tmp_path))

    assert_one_line_error(result, "fed-partition", "unknown source 'nosuchset'")


def test_argparse_errors_are_short_too() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "medfed.client", "--threads", "many"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 2 and "Traceback" not in result.stderr and "--threads" in result.stderr


def test_study_refuses_half_given_folders_and_a_used_out_folder(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")

    half = run_cli("medfed.tools.study", "--hospitals", str(tmp_path), "--out", str(tmp_path / "o"))
    used = run_cli("medfed.tools.study", "--out", str(tmp_path / "used"))

    assert_one_line_error(half, "fed-study", "--hospitals and --test go together")
    assert_one_line_error(used, "fed-study", "is not empty")
    assert half.returncode == used.returncode == 2
