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
