"""The test suite itself: every test says what it checks."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_asserts_something() -> None:
    """A test with no assert and no pytest.raises proves only that nothing raised: each one
    states what it checks (a wait that fails on timeout does not count)."""
    silent = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                body = ast.unparse(node)
                if "assert" not in body and "raises" not in body:
                    silent.append(f"{path.relative_to(TESTS)}::{node.name}")
    assert silent == [], f"tests that assert nothing: {silent}"
