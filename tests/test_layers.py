"""The one-way rule between the packages: flows → tasks → sonufy_model → sql.

Read from the source (every import statement, the lazy ones inside functions
too), so that a module importing against the rule fails here rather than in
review. ``sonufy_demo`` (the stand-in and the synthetic catalog) is no part of
the runtime path: the domain and the tasks never import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: What each package's modules must not import (top-level package names).
FORBIDDEN = {
    "sonufy_model": {"prefect", "flows", "tasks", "sonufy_demo"},
    "tasks": {"flows", "sonufy_demo"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package):
    wrong = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_packages(path) & FORBIDDEN[package])
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }
    assert {module: names for module, names in wrong.items() if names} == {}
