"""Layers point one way: slurm -> train -> data_pipeline, errors at the bottom, no cycles.

Every import statement counts, also those inside functions and under ``TYPE_CHECKING``, except
that the cycle check looks at imports that run (a type-only cycle cannot fail at import). The CLI's
command table (`train.cli.COMMAND_MODULES`) names ``slurm.commands`` as a string: the entry point
is the top of every layer.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("data_pipeline", "train", "slurm")  # bottom to top
# data_pipeline modules that may use dataset preparation: the package's CLI commands
PREPARE_USERS = ("data_pipeline.prepare", "data_pipeline.commands")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported(path: Path, modules: dict[str, Path], typing: bool = True) -> set[str]:
    """The project modules that ``path`` imports (``from pkg import mod`` names ``pkg.mod``);
    without ``typing``, leave out those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    if not typing:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use absolute ones"
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                names.add(child if child in modules else str(node.module))
    return {name for name in names if name.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(path, modules) - {name} for name, path in modules.items()}


@pytest.fixture(scope="module")
def runtime_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(path, modules, typing=False) - {name} for name, path in modules.items()}


def edges(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    """``module -> import`` for each import of a ``source`` module from the ``target`` prefix."""
    return sorted(
        f"{module} -> {name}"
        for module, names in graph.items()
        if module == source or module.startswith(source + ".")
        for name in names
        if name == target or name.startswith(target + ".")
    )


def test_packages_import_only_downward(graph: dict[str, set[str]]) -> None:
    for low, package in enumerate(PACKAGES):
        for higher in PACKAGES[low + 1 :]:
            assert edges(graph, package, higher) == [], f"{package} must not import {higher}"


def test_the_loader_side_does_not_reach_into_prepare(graph: dict[str, set[str]]) -> None:
    bad = [
        edge
        for edge in edges(graph, "data_pipeline", "data_pipeline.prepare")
        if not edge.startswith(PREPARE_USERS)
    ]
    assert bad == [], "the index format and shared helpers live above data_pipeline/prepare/"


def test_errors_are_at_the_bottom(graph: dict[str, set[str]]) -> None:
    assert graph["data_pipeline.errors"] == set()
    assert graph["train.errors"] == {"data_pipeline.errors"}


def test_no_import_cycles(runtime_graph: dict[str, set[str]]) -> None:
    try:
        TopologicalSorter(runtime_graph).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_a_violation_is_seen(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from train.errors import BlockmixError\n    import slurm.cli\n"
    )
    modules = {"train.errors": Path("train/errors.py")}
    assert imported(source, modules) == {"train.errors", "slurm.cli"}
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import train.x\n")
    assert imported(source, modules) == {"train.x"}
    assert imported(source, modules, typing=False) == set()
