"""Files: atomic placement (temporary names beside the target, fsync, rename, fsync the
directory), reading a file that untrusted input names (confined, regular, bounded), and the
caches a process keeps in the state directory (read as regular, bounded JSON; keyed by the
stamps of the source files that made them).

A temporary name always has the shape `.NAME.<pid>.<random>.tmp`, so a later pass can tell
leftovers apart from real files and remove them; they are never used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.errors import NoSpaceLeft
from reconciler.sizes import format_size


def temporary_path(target: Path) -> Path:
    """A fresh temporary path in the same directory as `target`."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_leftovers(target: Path) -> list[Path]:
    """Delete temporary files a crashed run left for `target`; return what was removed."""
    if not target.parent.is_dir():
        return []
    # the caller holds `target`'s lock, so this process's own leftovers for it are dead too
    return _remove_dead(target.parent.glob(f".{target.name}.*.tmp"), dry_run=False, own=True)


def remove_dead_leftovers(directory: Path, *, dry_run: bool = False) -> list[Path]:
    """Delete (or, `dry_run`, only list) every temporary file in `directory` whose writer
    process no longer exists."""
    try:
        names = os.listdir(directory)  # one call: a pass looks in every instance's directory
    except OSError:  # none (yet), or not a directory
        return []
    candidates = (directory / n for n in names if n.startswith(".") and n.endswith(".tmp"))
    return _remove_dead(candidates, dry_run=dry_run, own=False)


def _remove_dead(candidates: Iterable[Path], *, dry_run: bool, own: bool) -> list[Path]:
    removed: list[Path] = []
    for leftover in sorted(candidates):
        pid = writer_pid(leftover)
        if pid is None:
            continue  # not one of our temporary names
        if pid == os.getpid() and not own:
            continue  # another thread of this process may be writing it
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            continue  # another live process is still writing it
        if not dry_run:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def writer_pid(path: Path) -> int | None:
    """The pid in a temporary name `.NAME.<pid>.<random>.tmp`, or None for other names."""
    parts = path.name.rsplit(".", 3)
    if len(parts) != 4 or not path.name.startswith(".") or parts[3] != "tmp":
        return None
    return int(parts[1]) if parts[1].isdigit() else None


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temporary: Path, target: Path) -> None:
    """fsync `temporary`, rename it to `target` and make the rename durable."""
    fsync_file(temporary)
    os.replace(temporary, target)
    fsync_directory(target.parent)


def write_atomically(target: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `target` through a temporary file created with `mode` (so a secret is
    never readable by others, not even for a moment), fsynced and renamed into place."""
    temporary = temporary_path(target)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        publish(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def read_kept_json(path: Path, limit: int) -> Any:
    """The JSON value in `path`, a cache this program keeps: read only when it is a regular
    file (never a FIFO to block on, nor a symlink to follow) of at most `limit` bytes; None
    when it is anything else. Raises OSError (none, unreadable) or ValueError (not JSON, or
    nested beyond what the parser takes): a caller ignores the cache on either."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        try:
            return json.loads(stream.read(limit + 1))
        except RecursionError as err:
            raise ValueError("nested too deeply") from err


def build_stamp(files: Iterable[Path], *extra: str) -> str:
    """A digest of `files`' names, sizes and modification times (and of `extra`): what a
    cache made by this build of those source files is keyed by, so that an upgrade, or an
    edit of a source tree, is another build whose cache is not used."""
    digest = hashlib.sha256()
    for file in files:
        info = os.stat(file)
        digest.update(f"{file.name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    for text in extra:
        digest.update(f"{text}\n".encode())
    return digest.hexdigest()


class InputFileRefused(Exception):
    """A file named by untrusted input was not read; the message says why (never its content).
    Callers turn it into their own located error."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_kind(mode: int) -> str:
    """What a file of `mode` is, in words ("a regular file", "a FIFO", ...)."""
    return next((what for test, what in _KINDS if test(mode)), "a regular file")


def read_input_file(
    path: Path, confine: Path | None, limit: int, shown: str = "", limit_for: str = ""
) -> bytes:
    """The bytes of `path`, a file that untrusted input names: it must resolve (every symlink
    followed) inside `confine` (None: anywhere), be a regular file, and hold at most `limit`
    bytes. It is opened without blocking (a FIFO or a device never hangs the caller) and
    without following a last symlink swapped in after the check; its kind is checked on the
    opened descriptor. Raises InputFileRefused, with a message that names the path and never
    quotes the file (`shown`: how to name it, default its path; `limit_for`: what the limit is
    for, said after it)."""
    real = os.path.realpath(path)
    name = shown or str(path)
    if confine is not None and not Path(real).is_relative_to(confine):
        link = f" (which resolves to {real})" if real != os.path.abspath(path) else ""
        raise InputFileRefused(f"{name}{link} is outside {confine}; it was not read")
    try:
        before = os.lstat(real)
    except OSError as err:
        raise InputFileRefused(f"cannot read {name}: {err.strerror}") from err
    if not stat.S_ISREG(before.st_mode):  # not even opened: opening a device can act
        raise InputFileRefused(f"{name} is {file_kind(before.st_mode)}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as err:
        raise InputFileRefused(f"cannot read {name}: {err.strerror}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced between the check and the open
            raise InputFileRefused(f"{name} is {file_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise InputFileRefused(
                f"{name} is {format_size(info.st_size)}, more than the maximum of "
                f"{format_size(limit)}{limit_for}"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise InputFileRefused(f"cannot read {name}: {err.strerror}") from err
    finally:
        os.close(fd)
    if size > limit:  # it grew while being read
        raise InputFileRefused(
            f"{name} is larger than the maximum of {format_size(limit)}{limit_for}"
        )
    return b"".join(chunks)


_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(err: BaseException) -> bool:
    """Whether `err` says a file system or a quota is full."""
    return isinstance(err, OSError) and err.errno in _OUT_OF_SPACE


def free_bytes(path: Path | str) -> int | None:
    """Bytes free to this process on the file system of `path` (or of its nearest existing
    parent), None when it cannot be told."""
    candidate = Path(path)
    while True:
        try:
            info = os.statvfs(candidate)
            return info.f_bavail * info.f_frsize
        except OSError:
            if candidate.parent == candidate:
                return None
            candidate = candidate.parent


def no_space_left(err: OSError, path: Path | str, needed: int | None = None) -> NoSpaceLeft:
    """The NoSpaceLeft error for `err` (ENOSPC or EDQUOT) met while writing under `path`
    (the file `err` names, when it names one)."""
    where = str(err.filename) if err.filename else str(path)
    return NoSpaceLeft(where, free_bytes(where), needed)
