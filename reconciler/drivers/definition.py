"""A Machine as JSON: the QMP driver's persistent (and live) definitions, in the model's own
terms rather than libvirt's XML. `{"version": 1, "machine": {...}}`, each field by its name,
enums by value, tuples as lists; reading checks every value's type against the Machine's.

Definitions written as libvirt XML by earlier versions are read once and written anew (see
QmpDriver._definition).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any

from reconciler.model.machine import Machine

DEFINITION_VERSION = 1


class DefinitionError(Exception):
    """A definition file that is not a Machine (never leaves the driver)."""


def machine_to_json(machine: Machine) -> str:
    return json.dumps({"version": DEFINITION_VERSION, "machine": _plain(machine)}, indent=1)


@functools.lru_cache(maxsize=16384)
def machine_from_json(text: str) -> Machine:
    """The Machine a definition file holds (kept by its text: a pass reads every instance's
    definition, and most have not changed since the last)."""
    try:
        document = json.loads(text)
    except ValueError as err:
        raise DefinitionError(f"not JSON: {err}") from err
    if not isinstance(document, dict) or document.get("version") != DEFINITION_VERSION:
        raise DefinitionError(f"not a definition of version {DEFINITION_VERSION}")
    value = _typed(Machine, document.get("machine"), "machine")
    assert isinstance(value, Machine)
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's fields and their types (kept: every pass reads every definition)."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` (from JSON) as the type `hint` says, or DefinitionError naming `where`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _typed(option, value, where)
            except DefinitionError:
                continue
        raise DefinitionError(f"{where}: {value!r} is none of {hint}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list):
            raise DefinitionError(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(args) != len(value):
            raise DefinitionError(f"{where}: expected {len(args)} items")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_typed(arg, item, f"{where}[{i}]") for i, (arg, item) in pairs)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise DefinitionError(f"{where}: expected an object")
        hints = _hints(hint)
        unknown = set(value) - set(hints)
        if unknown:
            raise DefinitionError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        given = {name: _typed(hints[name], item, f"{where}.{name}") for name, item in value.items()}
        try:
            return hint(**given)
        except TypeError as err:
            raise DefinitionError(f"{where}: {err}") from err
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError as err:
            raise DefinitionError(f"{where}: {value!r} is not a {hint.__name__}") from err
    if hint is bool:
        if not isinstance(value, bool):
            raise DefinitionError(f"{where}: expected true or false")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DefinitionError(f"{where}: expected an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise DefinitionError(f"{where}: expected a string")
        return value
    raise DefinitionError(f"{where}: cannot read a {hint}")
