"""The model's frozen dataclasses as plain JSON values, and back. Pure.

`encode` writes a dataclass as an object of its fields (unless `full`, those equal to their
default are left out), an enum as its value, a tuple, list or frozenset as an array, a Path
as `{"$path": ...}` and bytes as `{"$bytes": base64}`. `decode(kind, data)` builds a value of
the declared type `kind` back from what `encode` wrote, guided by the field types alone: it
builds nothing the type does not declare, and anything of another shape (an unknown field, a
missing one, a number where a string belongs) raises CodecError, which says where
(`machine.disks[0].path: expected a string`). Safe on data read from a file: the QMP driver's
definitions and the state directory's caches use it, never pickle.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Decoder = Callable[[Any], Any]


class CodecError(ValueError):
    """Data that is not what the declared type's encoding would be, and where in it."""

    def __init__(self, message: str, where: str = "") -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)

    def inside(self, step: str) -> CodecError:
        """The same error, one level further out (`step`: ".field", "[3]" or a root name)."""
        return CodecError(self.message, step + self.where)


def encode(value: Any, full: bool = False) -> Any:
    """`value` (a dataclass, an enum, a container of them, a scalar) as plain JSON values;
    `full`: every field of a dataclass, its defaults too."""
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        encoded = {}
        for field, default in _defaults(type(value)):
            item = getattr(value, field)
            if full or default is _REQUIRED or item != default:
                encoded[field] = encode(item, full)
        return encoded
    if isinstance(value, tuple | list):
        return [encode(item, full) for item in value]
    if isinstance(value, frozenset | set):
        return sorted((encode(item, full) for item in value), key=repr)
    if isinstance(value, Path):
        return {"$path": str(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(key): encode(item, full) for key, item in value.items()}
    raise CodecError(f"cannot encode a {type(value).__name__}")


def decode(kind: type[T], data: Any, root: str = "") -> T:
    """A `kind` built from `data` as `encode` wrote it (CodecError: it is not; its place
    starts with `root`)."""
    try:
        decoded: T = _decoder(typing.cast(Any, kind))(data)
    except CodecError as err:
        raise err.inside(root) from None
    return decoded


_REQUIRED = object()
_path = functools.lru_cache(maxsize=4096)(Path)  # a Path is immutable: the same one is shared


@functools.cache
def _defaults(cls: type) -> tuple[tuple[str, Any], ...]:
    """Each field of dataclass `cls` and its default (_REQUIRED: none)."""
    found = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = _REQUIRED
        found.append((field.name, default))
    return tuple(found)


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "an object", type(None): "null"}  # fmt: skip


@functools.cache
def _decoder(kind: Any) -> Decoder:
    """The function that decodes values of the declared type `kind` (made once per type)."""
    if kind is type(None) or kind is None:
        return _exactly(type(None))
    if kind in (bool, int, str):
        return _exactly(kind)
    if kind is float:
        return lambda data: float(_exactly(int, float)(data))
    if kind is Path:
        return lambda data: _path(_exactly(str)(_tagged(data, "$path")))
    if kind is bytes:
        return _bytes
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return _enum(kind)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _record(kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _union(args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence(_decoder(args[0]), tuple)
    if origin is tuple:
        return _fixed([_decoder(arg) for arg in args])
    if origin in (list, frozenset):
        return _sequence(_decoder(args[0]), origin)
    if origin is dict and args[0] is str:
        return _mapping(_decoder(args[1]))
    raise CodecError(f"no decoding for the type {kind!r}")


def _exactly(*kinds: type) -> Decoder:
    def check(data: Any) -> Any:
        # a bool is an int to isinstance: never taken for a number, nor a number for a bool
        if type(data) not in kinds:
            raise CodecError(f"expected {' or '.join(_WORDS[k] for k in kinds)}")
        return data

    return check


def _tagged(data: Any, tag: str) -> Any:
    if type(data) is not dict or set(data) != {tag}:
        raise CodecError(f'expected {{"{tag}": ...}}')
    return data[tag]


def _bytes(data: Any) -> bytes:
    try:
        return base64.b64decode(_exactly(str)(_tagged(data, "$bytes")), validate=True)
    except ValueError as err:
        raise CodecError(f"not base64: {err}") from None


def _enum(cls: type[enum.Enum]) -> Decoder:
    def decode_member(data: Any) -> Any:
        try:
            return cls(data)
        except ValueError:
            raise CodecError(f"{data!r:.60} is not a {cls.__name__}") from None

    return decode_member


def _union(args: tuple[Any, ...]) -> Decoder:
    """None, when the union allows it; else the first member type that decodes the value."""
    optional = type(None) in args
    members = [_decoder(arg) for arg in args if arg is not type(None)]
    names = ", ".join(getattr(arg, "__name__", str(arg)) for arg in args)

    def decode_any(data: Any) -> Any:
        if data is None and optional:
            return None
        for member in members:
            try:
                return member(data)
            except CodecError:
                continue
        raise CodecError(f"{data!r:.60} is none of {names}")

    return decode_any


def _sequence(item: Decoder, kind: Callable[[Any], Any]) -> Decoder:
    def decode_items(data: Any) -> Any:
        items = _exactly(list)(data)
        try:
            return kind([item(x) for x in items])
        except CodecError:
            for index, x in enumerate(items):  # again, to say which item
                try:
                    item(x)
                except CodecError as err:
                    raise err.inside(f"[{index}]") from None
            raise

    return decode_items


def _fixed(items: list[Decoder]) -> Decoder:
    def decode_items(data: Any) -> Any:
        given = _exactly(list)(data)
        if len(given) != len(items):
            raise CodecError(f"expected a list of {len(items)}")
        decoded = []
        for index, (item, x) in enumerate(zip(items, given, strict=True)):
            try:
                decoded.append(item(x))
            except CodecError as err:
                raise err.inside(f"[{index}]") from None
        return tuple(decoded)

    return decode_items


def _mapping(value: Decoder) -> Decoder:
    def decode_items(data: Any) -> Any:
        decoded = {}
        for key, item in _exactly(dict)(data).items():
            try:
                decoded[key] = value(item)
            except CodecError as err:
                raise err.inside(f"[{key!r:.60}]") from None
        return decoded

    return decode_items


def _record(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = {name: _decoder(hints[name]) for name, _default in _defaults(cls)}
    required = frozenset(name for name, default in _defaults(cls) if default is _REQUIRED)

    def build(data: Any) -> Any:
        given = _exactly(dict)(data)
        unknown = given.keys() - fields.keys()
        if unknown:
            raise CodecError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))[:200]}")
        decoded = {}
        for name, item in given.items():
            try:
                decoded[name] = fields[name](item)
            except CodecError as err:
                raise err.inside(f".{name}") from None
        missing = required - given.keys()
        if missing:
            raise CodecError(f"missing field(s) {', '.join(sorted(missing))}")
        try:
            return cls(**decoded)
        except (TypeError, ValueError) as err:  # a model's own check of its values
            raise CodecError(f"not a {cls.__name__}: {err}") from None

    return build
