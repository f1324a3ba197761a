"""The manifest files' readings kept in the state directory between processes, so that a
no-op `--once` or `plan` over unchanged files parses no YAML and validates nothing.

What is kept is exactly what a daemon keeps in memory (filecache.ManifestFileCache): per file,
its stamp before it was read, where its named files had to lie, the files it named with their
stamps, and what reading it gave (its instances, errors, claimed names, valid document keys,
sets and unlocked image names). A reading holds while the file and the files it names keep
their stamps; a file that defines or uses a profile is never kept (its result depends on
other files), nor one modified within the last seconds (filecache.RACY_SECONDS).

The file is JSON (model.codec for the specs, never pickle), versioned, and written atomically
by the process that holds the state directory. It is trusted no more than a cache: read with
a size bound, its every field checked as it is decoded; anything wrong (another version,
another build of the reconciler, another catalogue, a corrupt or truncated file) and it is
ignored as a whole, and the pass reads the manifests as if it were not there.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from reconciler.errors import ManifestError, SourceLocation
from reconciler.fileops import build_stamp, read_kept_json, write_atomically
from reconciler.manifests.filecache import FileStamp, ManifestFileCache, NamedFile, Reading
from reconciler.model.codec import CodecError, decode, encode
from reconciler.model.desired import InstanceSpec
from reconciler.model.imagelock import ImageName

VERSION = 1
MAX_STORE_BYTES = 256 * 1024 * 1024
_PACKAGE = Path(__file__).resolve().parent.parent


def load_store(path: Path, catalogue: Collection[str] | None) -> ManifestFileCache:
    """The readings `path` keeps for this build and `catalogue` (none when it keeps none, or
    anything about it is wrong)."""
    cache = ManifestFileCache()
    try:
        data = read_kept_json(path, MAX_STORE_BYTES)
        if type(data) is not dict or data.get("version") != VERSION:
            return cache
        if data.get("context") != context_key(catalogue):
            return cache
        readings = [(Path(_text(p)), _reading(r)) for p, r in _items(data.get("readings"))]
    except (OSError, ValueError, CodecError, TypeError, KeyError, RecursionError):
        return cache
    cache.restore(readings)
    return cache


def save_store(path: Path, cache: ManifestFileCache, catalogue: Collection[str] | None) -> None:
    """Write what `cache` holds to `path`, atomically (an error is the caller's to ignore)."""
    readings = {}
    for file, reading in cache.items():
        try:
            readings[str(file)] = _encode_reading(reading)
        except CodecError:  # a reading it cannot write is read again by the next pass
            continue
    data = {"version": VERSION, "context": context_key(catalogue), "readings": readings}
    write_atomically(path, json.dumps(data, separators=(",", ":")).encode())


def context_key(catalogue: Collection[str] | None) -> str:
    """What a reading depends on beyond its files: this build of the loader, its schemas and
    model (their files' stamps: an upgrade, or an edit of a source tree, is another build)
    and the catalogue's names."""
    sources = [
        _PACKAGE / directory / name
        for directory in ("manifests", "manifests/schemas", "model")
        for name in sorted(os.listdir(_PACKAGE / directory))
        if name.endswith((".py", ".json"))
    ]
    names = "-" if catalogue is None else ",".join(sorted(catalogue))
    return build_stamp(sources, names)


def _encode_reading(reading: Reading) -> dict[str, Any]:
    instances, errors, claims, valid, sets, unlocked = reading.result
    return {
        "stamp": reading.stamp,
        "confine": str(reading.confine),
        "named": [[str(f.path), f.real, f.stamp] for f in reading.named],
        "instances": [[encode(spec), encode(location)] for spec, location in instances],
        "errors": [_encode_error(e) for e in errors],
        "claims": {name: encode(location) for name, location in claims.items()},
        "valid": sorted(valid),
        "sets": [list(item) for item in sets],
        "unlocked": [encode(name) for name in sorted(unlocked, key=lambda n: n.key)],
    }


def _encode_error(error: ManifestError) -> list[Any]:
    if type(error) is not ManifestError:  # a subclass would come back as another class
        raise CodecError(f"cannot keep a {type(error).__name__}")
    return [encode(error.location), error.pointer, error.message, error.hint]


def _reading(data: Any) -> Reading:
    if type(data) is not dict:
        raise CodecError("a reading is an object")
    instances = [
        (decode(InstanceSpec, spec), decode(SourceLocation, location))
        for spec, location in _pairs(data["instances"])
    ]
    errors: list[ManifestError] = []
    for item in _list(data["errors"]):
        location, pointer, message, hint = _list(item, 4)
        where = decode(SourceLocation, location)
        errors.append(ManifestError(where, _text(pointer), _text(message), _text(hint)))
    claims = {_text(n): decode(SourceLocation, loc) for n, loc in _dict(data["claims"]).items()}
    valid = frozenset(_text(key) for key in _list(data["valid"]))
    sets = tuple((_text(n), _count(r)) for n, r in _pairs(data["sets"]))
    unlocked = frozenset(decode(ImageName, item) for item in _list(data["unlocked"]))
    named = tuple(
        NamedFile(_path(_text(p)), _text(real), _stamp(stamp))
        for p, real, stamp in (_list(item, 3) for item in _list(data["named"]))
    )
    result = (instances, errors, claims, valid, sets, unlocked)
    return Reading(_stamp(data["stamp"]), _path(_text(data["confine"])), named, result)


_path = functools.lru_cache(maxsize=4096)(Path)  # the same directories, over and over


def _stamp(data: Any) -> FileStamp:
    if data is None:
        return None
    a, b, c, d, e = (_count(x) for x in _list(data, 5))
    return (a, b, c, d, e)


def _items(data: Any) -> list[tuple[Any, Any]]:
    return list(_dict(data).items())


def _pairs(data: Any) -> list[tuple[Any, Any]]:
    return [(a, b) for a, b in (_list(item, 2) for item in _list(data))]


def _list(data: Any, length: int | None = None) -> list[Any]:
    if type(data) is not list or (length is not None and len(data) != length):
        raise CodecError(f"expected a list of {length or 'any number of'} items")
    return data


def _dict(data: Any) -> dict[str, Any]:
    if type(data) is not dict:
        raise CodecError("expected an object")
    return data


def _text(data: Any) -> str:
    if type(data) is not str:
        raise CodecError("expected a string")
    return data


def _count(data: Any) -> int:
    if type(data) is not int:
        raise CodecError("expected a whole number")
    return data
