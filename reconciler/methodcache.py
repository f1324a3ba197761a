"""The bytecode cache, extended to the methods `dataclasses` writes at import time.

A dataclass's `__init__`, `__repr__`, `__eq__`, `__hash__` and (frozen) `__setattr__` are
generated as source text and compiled each time the class is made, in every process: for the
package's 120-odd dataclasses that compiling was half of what importing the command took
(about 60 ms of a no-op pass's 0.2 s). Python keeps the bytecode of modules in `__pycache__`;
this keeps the bytecode of that generated text beside it, keyed by the text's sha256, so that
the methods are compiled once per build and interpreter, as module code is.

How: `install()` gives the dataclasses module an `exec` of its own that looks a source text up
before compiling it (anything but a text is passed through; if a later Python stops handing
text to `exec`, the cache just stays empty). It is the same code either way: the key is the
whole text, and a text not in the cache is compiled as before.

The file (`__pycache__/dataclass-methods.<tag>.bin`, or under `sys.pycache_prefix`) is trusted
as a `.pyc` is, and checked a little more: it is read only if it is a regular file owned by
this user or by the owner of the package's directory, writable by no one else; with the
interpreter's magic number and this format's version; and it holds a mapping of digests to code
objects, else it is ignored. It is written at exit, atomically, when this process compiled
something new, unless bytecode is not written (`PYTHONDONTWRITEBYTECODE`, `-B`).
"""

from __future__ import annotations

import atexit
import builtins
import hashlib
import importlib.util
import marshal
import os
import stat
import sys
import threading
import types
from pathlib import Path
from typing import Any

FORMAT = b"reconciler-dataclass-methods/1\n"
MAX_ENTRIES = 4096
MAX_BYTES = 16 * 1024 * 1024
_PACKAGE = Path(__file__).resolve().parent

_lock = threading.Lock()
_stored: dict[str, types.CodeType] = {}
_new: dict[str, types.CodeType] = {}
compiled = 0  # texts this process compiled (none when the cache held them all)
_installed = False


def cache_path() -> Path:
    """Where the cache of this package, under this interpreter, is kept."""
    pyc = importlib.util.cache_from_source(str(_PACKAGE / "dataclass-methods.py"))
    return Path(pyc).with_suffix(".bin")


def install() -> None:
    """Read the cache and route the dataclasses module's compiling through it (once)."""
    global _installed
    import dataclasses

    with _lock:
        if _installed:
            return
        _installed = True
        _stored.update(_read(cache_path()))
    dataclasses.exec = _cached_exec  # type: ignore[attr-defined]
    atexit.register(save)


def _cached_exec(source: Any, scope: Any = None, names: Any = None) -> None:
    global compiled
    if isinstance(source, str):
        key = hashlib.sha256(source.encode()).hexdigest()
        code = _stored.get(key) or _new.get(key)
        if code is None:
            code = compile(source, "<string>", "exec")
            with _lock:
                _new[key] = code
                compiled += 1
        source = code
    builtins.exec(source, scope, names)


def save() -> None:
    """Write the cache when this process compiled something it did not hold (an error is
    ignored: the next process compiles again)."""
    if sys.dont_write_bytecode:
        return
    with _lock:
        if not _new:
            return
        entries = dict(_new)
        for key, code in _stored.items():
            if len(entries) >= MAX_ENTRIES:
                break
            entries.setdefault(key, code)
    path = cache_path()
    data = FORMAT + importlib.util.MAGIC_NUMBER + marshal.dumps(entries)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except OSError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
    with _lock:
        _stored.update(_new)
        _new.clear()


def _read(path: Path) -> dict[str, types.CodeType]:
    """The cache in `path` (empty when it is not one this process may trust). Not
    fileops.read_kept_json: this runs before any other module of the package is imported
    (fileops would bring errors.py's dataclass, compiled before the cache is read), it is
    marshal rather than JSON, and it also checks who owns the file and who may write it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    with os.fdopen(descriptor, "rb") as stream:
        try:
            info = os.fstat(stream.fileno())
            owners = {os.geteuid(), os.stat(_PACKAGE).st_uid}
        except OSError:
            return {}
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid not in owners
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            or info.st_size > MAX_BYTES
        ):
            return {}
        data = stream.read(MAX_BYTES + 1)
    header = FORMAT + importlib.util.MAGIC_NUMBER
    if not data.startswith(header):
        return {}
    try:
        entries = marshal.loads(data[len(header) :])
    except (EOFError, ValueError, TypeError):
        return {}
    if type(entries) is not dict or not all(
        type(key) is str and type(code) is types.CodeType for key, code in entries.items()
    ):
        return {}
    return entries
