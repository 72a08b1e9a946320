"""The README's promises that code can check: its refusal table names every status the coordinator
refuses with, the install section gives the exact command for PyTorch's CPU-only build, and the map of
the tree names every module."""

import re
from pathlib import Path

from medfed.server import servicer

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def table_after(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table after ``heading``, each a list of cells (header dropped)."""
    start = README.index(heading)
    lines = README[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_refusal_table_lists_every_status_the_coordinator_refuses_with() -> None:
    listed = {row[-1] for row in table_after("**What the coordinator refuses, and how.**")}

    assert listed == {code.name for code in servicer._STATUS.values()}


def test_the_install_section_gives_the_command_for_pytorchs_cpu_build() -> None:
    install = README[README.index("## Install") : README.index("## Run the demo")]

    assert re.search(r"pip install torch torchvision --index-url https://download\.pytorch\.org/whl/cpu\n", install)


def test_the_map_of_the_tree_lists_every_module_in_its_folders_row() -> None:
    root = Path(__file__).resolve().parents[2]
    rows = {row[0].strip("`"): row[-1] for row in table_after("## How the tree maps to imports")}
    missing = []
    for folder in ("common", "server", "client", "tools"):
        for package in sorted({p.parent for p in (root / folder).rglob("__init__.py")}):
            where = package.relative_to(root).as_posix() + "/"
            for module in sorted(package.glob("*.py")):
                if module.stem not in ("__init__", "__main__") and f"`{module.stem}`" not in rows.get(where, ""):
                    missing.append(f"{where}{module.name}")

    assert missing == []
