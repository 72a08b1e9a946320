"""The committed gRPC/protobuf code must be exactly what protos/generate.py produces."""

import importlib.util
from pathlib import Path

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def test_committed_generated_code_matches_a_fresh_regeneration(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", PROTOS / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

    fresh = generate.generate(tmp_path)

    assert len(fresh) == 4
    for path in fresh:
        committed = PROTOS / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is not committed"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python protos/generate.py"
