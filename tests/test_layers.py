"""The layers import downward only: what loads, scores or serves a model never imports the trainer,
and relist.io (the ground floor) imports nothing else from relist."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RELIST = Path(__file__).resolve().parent.parent / "relist"
BELOW_TRAIN = ["models", "eval", "serve", "rerank", "data", "sim", "io", "objective.py"]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(part: str) -> list[Path]:
    path = RELIST / part
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("part", BELOW_TRAIN)
def test_nothing_below_train_imports_it(part):
    upward = {f"{path.relative_to(RELIST.parent)}: {name}" for path in sources(part)
              for name in imported_modules(path) if name == "relist.train" or name.startswith("relist.train.")}
    assert not upward


def test_io_imports_nothing_else_from_relist():
    other = {f"{path.relative_to(RELIST.parent)}: {name}" for path in sources("io")
             for name in imported_modules(path)
             if name.startswith("relist") and not (name == "relist.io" or name.startswith("relist.io."))}
    assert not other


def test_every_import_of_relist_names_a_module_that_exists():
    """Imports inside functions run only when called, so a module moved away breaks them silently
    until then; every ``from relist.x import ...`` anywhere in the tree must name a real module."""
    root = RELIST.parent
    files = [*RELIST.rglob("*.py"), *(root / "benchmarks").rglob("*.py"), *(root / "tests").rglob("*.py")]
    missing = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                       else [])
            for module in modules:
                if module.split(".")[0] != "relist":
                    continue
                target = root.joinpath(*module.split("."))
                if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                    missing.add(f"{path.relative_to(root)}: {module}")
    assert not missing
