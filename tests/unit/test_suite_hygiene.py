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


def test_the_readme_command_hands_out_one_test_at_a_time_slowest_first() -> None:
    """The order tests/conftest.py gives (modules marked `first` first) is the order workers
    take them in: one test per unit of work (no test grouped), never reordered by xdist."""
    makefile = (TESTS.parent / "Makefile").read_text()
    (command,) = [line for line in makefile.splitlines() if "$(BIN)/pytest" in line]
    assert "--dist loadgroup" in command and "--no-loadscope-reorder" in command, command
    grouped = [
        str(path.relative_to(TESTS))
        for path in sorted(TESTS.rglob("*.py"))
        if "xdist_group" in path.read_text() and path.name != Path(__file__).name
    ]
    assert grouped == [], f"tests grouped onto one worker: {grouped}"
