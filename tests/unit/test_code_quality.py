"""Lint and strict typing are part of the test suite, so CI keeps them clean.

mypy cannot follow setuptools' package-dir mapping (server/ is installed as medfed.server), so the
sources are type-checked through a tree of symlinks laid out the way they are imported.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "server": "server", "client": "client", "common": "common", "tools": "tools", "proto": "protos/medfed/proto",
}  # fmt: skip


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_sources_are_mypy_clean(tmp_path: Path) -> None:
    tree = tmp_path / "medfed"
    tree.mkdir()
    for name, source in PACKAGES.items():
        (tree / name).symlink_to(ROOT / source, target_is_directory=True)
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    command += [arg for name in PACKAGES for arg in ("-p", f"medfed.{name}")]

    result = subprocess.run(
        command,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
