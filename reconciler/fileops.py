"""Atomic file placement: temporary names beside the target, fsync, rename, fsync the directory.

A temporary name always has the shape `.NAME.<pid>.<random>.tmp`, so a later pass can tell
leftovers apart from real files and remove them; they are never used.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def temporary_path(target: Path) -> Path:
    """A fresh temporary path in the same directory as `target`."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_leftovers(target: Path) -> list[Path]:
    """Delete temporary files a crashed run left for `target`; return what was removed."""
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        pid = leftover.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and Path(f"/proc/{pid}").exists():
            continue  # another live process is still writing it
        leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


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
