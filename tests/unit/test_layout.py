"""The tree's rules, checked on the sources: the dependency rule (tools -> server | client -> common ->
proto), and pyproject's package list matching the packages on disk."""

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"proto": ROOT / "protos/medfed/proto", "common": ROOT / "common", "server": ROOT / "server",
           "client": ROOT / "client", "tools": ROOT / "tools"}  # fmt: skip
MAY_IMPORT = {
    "proto": {"proto"},
    "common": {"common", "proto"},
    "server": {"server", "common", "proto"},
    "client": {"client", "common", "proto"},
    "tools": {"tools", "server", "client", "common", "proto"},
}


def medfed_imports(path: Path) -> set[str]:
    """The top-level medfed packages a file imports, wherever in the file the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "medfed"]
        found |= {n.split(".")[1] for n in names if n.startswith("medfed.") and n.count(".") >= 1}
    return found


def test_each_layer_imports_only_the_layers_below_it() -> None:
    broken = [
        f"{path.relative_to(ROOT)} imports medfed.{package}"
        for layer, folder in FOLDERS.items()
        for path in sorted(folder.rglob("*.py"))
        for package in sorted(medfed_imports(path) - MAY_IMPORT[layer])
    ]

    assert broken == []


def test_pyprojects_packages_are_the_packages_on_disk() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        "medfed."
        + (
            ".".join(("proto", *init.parent.relative_to(folder).parts))
            if layer == "proto"
            else ".".join((layer, *init.parent.relative_to(folder).parts))
        )
        for layer, folder in FOLDERS.items()
        for init in folder.rglob("__init__.py")
    }

    assert set(setuptools["packages"]) == on_disk
    assert set(setuptools["package-dir"]) == on_disk
    assert all((ROOT / where / "__init__.py").exists() for where in setuptools["package-dir"].values())


TRANSPORT_EDGES = {
    "server/servicer.py", "server/admin_service.py", "server/app.py", "server/health.py", "client/connection.py",
    "client/app.py", "tools/admin.py", "server/secure_exchange.py",
}  # fmt: skip
"""the only modules outside common/wire/ that touch gRPC or the generated protos (through common/wire/proto)"""


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_the_transport_edges_touch_grpc_and_only_common_wire_imports_the_generated_protos() -> None:
    transport = {"grpc", "grpc_health.v1", "medfed.common.wire.proto", "medfed.common.wire.stream"}
    offenders = []
    for layer in ("common", "server", "client", "tools"):
        for path in sorted(FOLDERS[layer].rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            modules = imported_modules(path)
            if any(m == "medfed.proto" or m.startswith("medfed.proto.") for m in modules) and not where.startswith(
                "common/wire/"
            ):
                offenders.append(f"{where} imports the generated protos")
            touches = {m for m in modules if m in transport or m.startswith("grpc.") or m.startswith("grpc_health")}
            if touches and where not in TRANSPORT_EDGES and not where.startswith("common/wire/"):
                offenders.append(f"{where} imports {sorted(touches)}")

    assert offenders == []
