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
from collections.abc import Callable
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


Decoder = Callable[[Any, str], Any]


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` (from JSON) as the type `hint` says, or DefinitionError naming `where`."""
    return _decoder(hint)(value, where)


@functools.cache
def _decoder(hint: Any) -> Decoder:
    """The function that reads a value of type `hint` (made once per type: a pass reads
    every instance's definition)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _union([_decoder(o) for o in typing.get_args(hint) if o is not type(None)],
                      type(None) in typing.get_args(hint), hint)  # fmt: skip
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(_decoder(args[0]))
        return _fixed([_decoder(arg) for arg in args])
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _record(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    if hint in (bool, int, str):
        return _scalar(hint)
    raise TypeError(f"a definition cannot hold a {hint}")


def _union(options: list[Decoder], optional: bool, hint: Any) -> Decoder:
    def decode(value: Any, where: str) -> Any:
        if value is None and optional:
            return None
        for option in options:
            try:
                return option(value, where)
            except DefinitionError:
                continue
        raise DefinitionError(f"{where}: {value!r} is none of {hint}")

    return decode


def _sequence(item: Decoder) -> Decoder:
    def decode(value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise DefinitionError(f"{where}: expected a list")
        return tuple(item(element, f"{where}[{i}]") for i, element in enumerate(value))

    return decode


def _fixed(items: list[Decoder]) -> Decoder:
    def decode(value: Any, where: str) -> Any:
        if not isinstance(value, list) or len(value) != len(items):
            raise DefinitionError(f"{where}: expected a list of {len(items)}")
        pairs = enumerate(zip(items, value, strict=True))
        return tuple(item(element, f"{where}[{i}]") for i, (item, element) in pairs)

    return decode


def _record(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = {field.name: _decoder(hints[field.name]) for field in dataclasses.fields(cls)}

    def decode(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise DefinitionError(f"{where}: expected an object")
        unknown = set(value) - set(fields)
        if unknown:
            raise DefinitionError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        given = {name: fields[name](item, f"{where}.{name}") for name, item in value.items()}
        try:
            return cls(**given)
        except TypeError as err:
            raise DefinitionError(f"{where}: {err}") from err

    return decode


def _enum(cls: type[enum.Enum]) -> Decoder:
    def decode(value: Any, where: str) -> Any:
        try:
            return cls(value)
        except ValueError as err:
            raise DefinitionError(f"{where}: {value!r} is not a {cls.__name__}") from err

    return decode


_SCALAR_WORDS = {bool: "true or false", int: "an integer", str: "a string"}


def _scalar(kind: type) -> Decoder:
    def decode(value: Any, where: str) -> Any:
        # bool is an int to Python: an integer field takes no true or false
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DefinitionError(f"{where}: expected {_SCALAR_WORDS[kind]}")
        return value

    return decode
