"""The shared layer stays below the solutions: nothing in common/ imports solutions (the registry and
the plugins listed in pyproject.toml reach them)."""
from __future__ import annotations

import ast

from common.paths import REPO


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_common_imports_no_solution():
    files = sorted((REPO / "common").rglob("*.py"))
    assert len(files) > 20
    reaching = {f.name: sorted(m for m in imported_modules(f) if m.split(".")[0] == "solutions") for f in files}
    assert {f: m for f, m in reaching.items() if m} == {}


def test_the_check_sees_an_import_of_solutions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from solutions.convoluted.fuse import head_for\n    import solutions.dylan\n")
    assert imported_modules(probe) == {"solutions.convoluted.fuse", "solutions.dylan"}
