"""The model's frozen dataclasses as plain JSON values, and back. Pure.

`encode` writes a dataclass as an object of its fields (those equal to their default are left
out), an enum as its value, a tuple, list or frozenset as an array, a Path as `{"$path": ...}`
and bytes as `{"$bytes": base64}`. `decode(kind, data)` builds a value of the declared type
`kind` back from what `encode` wrote, guided by the field types alone: it builds nothing the
type does not declare, and anything of another shape (an unknown field, a missing one, a
number where a string belongs) raises CodecError. Safe on data read from a file: it is what
the state directory's caches use instead of pickle.
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
    """Data that is not what the declared type's encoding would be."""


def encode(value: Any) -> Any:
    """`value` (a dataclass, an enum, a container of them, a scalar) as plain JSON values."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        encoded = {}
        for field, default in _defaults(type(value)):
            item = getattr(value, field)
            if default is _REQUIRED or item != default:
                encoded[field] = encode(item)
        return encoded
    if isinstance(value, tuple | list):
        return [encode(item) for item in value]
    if isinstance(value, frozenset | set):
        return sorted((encode(item) for item in value), key=repr)
    if isinstance(value, Path):
        return {"$path": str(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(key): encode(item) for key, item in value.items()}
    raise CodecError(f"cannot encode a {type(value).__name__}")


def decode(kind: type[T], data: Any) -> T:
    """A `kind` built from `data` as `encode` wrote it (CodecError: it is not)."""
    try:
        decoded: T = _decoder(typing.cast(Any, kind))(data)
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise CodecError(f"not a {getattr(kind, '__name__', kind)}: {err}") from err
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


@functools.cache
def _decoder(kind: Any) -> Decoder:
    """The function that decodes values of the declared type `kind`."""
    if kind is Any:
        raise CodecError("Any is not a declared type")
    if kind is type(None) or kind is None:
        return _exactly(type(None))
    if kind is bool:
        return _exactly(bool)
    if kind is int:
        return _exactly(int)
    if kind is float:
        return lambda data: float(_exactly(int, float)(data))
    if kind is str:
        return _exactly(str)
    if kind is Path:
        return lambda data: _path(_exactly(str)(_tagged(data, "$path")))
    if kind is bytes:
        return lambda data: base64.b64decode(_exactly(str)(_tagged(data, "$bytes")), validate=True)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _dataclass_decoder(kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _union_decoder(args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])
        return lambda data: tuple(item(x) for x in _exactly(list)(data))
    if origin is tuple:
        items = [_decoder(arg) for arg in args]
        return lambda data: _fixed(items, _exactly(list)(data))
    if origin in (list, frozenset):
        item = _decoder(args[0])
        return lambda data: origin(item(x) for x in _exactly(list)(data))
    if origin is dict and args[0] is str:
        value = _decoder(args[1])
        return lambda data: {_exactly(str)(k): value(v) for k, v in _exactly(dict)(data).items()}
    raise CodecError(f"no decoding for the type {kind!r}")


def _exactly(*kinds: type) -> Decoder:
    def check(data: Any) -> Any:
        # a bool is an int to isinstance: never taken for a number, nor a number for a bool
        if type(data) not in kinds:
            raise CodecError(f"expected {' or '.join(k.__name__ for k in kinds)}, got {data!r:.60}")
        return data

    return check


def _tagged(data: Any, tag: str) -> Any:
    if type(data) is not dict or set(data) != {tag}:
        raise CodecError(f"expected {{{tag!r}: ...}}, got {data!r:.60}")
    return data[tag]


def _fixed(items: list[Decoder], data: list[Any]) -> tuple[Any, ...]:
    if len(data) != len(items):
        raise CodecError(f"expected {len(items)} items, got {len(data)}")
    return tuple(item(x) for item, x in zip(items, data, strict=True))


def _union_decoder(args: tuple[Any, ...]) -> Decoder:
    """The first member type that decodes the value."""
    members = [_decoder(arg) for arg in args]

    def decode_any(data: Any) -> Any:
        for member in members:
            try:
                return member(data)
            except (CodecError, TypeError, ValueError, KeyError):
                continue
        raise CodecError(f"{data!r:.60} is none of {', '.join(map(str, args))}")

    return decode_any


def _dataclass_decoder(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = {name: _decoder(hints[name]) for name, _default in _defaults(cls)}
    required = {name for name, default in _defaults(cls) if default is _REQUIRED}

    def build(data: Any) -> Any:
        given = _exactly(dict)(data)
        unknown = set(given) - set(fields)
        if unknown:
            raise CodecError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        missing = required - set(given)
        if missing:
            raise CodecError(f"{cls.__name__}: missing fields {sorted(missing)}")
        return cls(**{name: fields[name](value) for name, value in given.items()})

    return build
