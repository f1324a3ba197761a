"""The error tree in errors.py's docstring is the one the classes form: every subclass of
ReconcilerError, in every module of the package, under the parent the drawing gives it."""

from __future__ import annotations

import importlib
import pkgutil
import re

import reconciler
from reconciler import errors
from reconciler.errors import ReconcilerError


def drawn() -> set[tuple[str, str | None]]:
    """(class, parent) for each line of the docstring's tree."""
    doc = errors.__doc__ or ""
    lines = doc[doc.index("ReconcilerError\n") :].split("\n\n", 1)[0].splitlines()
    pairs: set[tuple[str, str | None]] = {("ReconcilerError", None)}
    parents = ["ReconcilerError"]
    for line in lines[1:]:
        match = re.match(r"^([ |]*)\+-- (\w+)", line)
        assert match is not None, line
        depth = (len(match.group(1)) - 1) // 5 + 1
        parents[depth:] = [match.group(2)]
        pairs.add((match.group(2), parents[depth - 1]))
    return pairs


def defined() -> set[tuple[str, str | None]]:
    """(class, parent) for ReconcilerError and each subclass the package defines."""
    for module in pkgutil.walk_packages(reconciler.__path__, "reconciler."):
        if module.name != "reconciler.__main__":
            importlib.import_module(module.name)
    pairs: set[tuple[str, str | None]] = {("ReconcilerError", None)}
    pending = [ReconcilerError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("reconciler."):
                pairs.add((sub.__name__, cls.__name__))
                pending.append(sub)
    return pairs


def test_the_docstring_draws_the_error_tree_the_classes_form() -> None:
    drawing, classes = drawn(), defined()
    assert not classes - drawing, f"not drawn (or under another parent): {classes - drawing}"
    assert not drawing - classes, f"drawn but not defined so: {drawing - classes}"
