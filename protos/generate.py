"""Regenerate the Python code and type stubs for protos/medfed/proto/v1/*.proto.

Run from anywhere with the dev extras installed: ``python protos/generate.py``.
The output is committed; tests/unit/test_generated_code.py fails when a regeneration would change it,
so edit the .proto, run this, and commit both.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.glob("medfed/proto/v1/*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """Find a protoc plugin next to this interpreter first, so a venv's copy wins over PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extras (pip install -e '.[dev]')")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Write generated files under out_dir (mirroring protos/) and return their paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)")
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
