"""Garbage collection of the image cache (Nova's image cache manager).

A cached base is removed when no disk in the state directory uses it as its backing file
(read from the disks' qcow2 headers) and it has not been used for the grace period (its
mtime is refreshed every time an overlay is built on it). The check is repeated under the
entry's lock just before removal, so a base that became used meanwhile is kept. Temporary
files left by dead processes are removed too.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.diskheaders import HeaderError, parse_qcow2_header, read_head
from reconciler.fileops import remove_leftovers
from reconciler.imagecache import ImageCache
from reconciler.statedir import StateDir

LOG = logging.getLogger(__name__)


@dataclass(slots=True)
class GcReport:
    """What a collection removed (or, dry, would remove) and what it kept, and why."""

    removed: list[Path] = field(default_factory=list)
    in_use: list[Path] = field(default_factory=list)
    too_young: list[Path] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)


def bases_in_use(state: StateDir) -> set[Path]:
    """Every file that a disk under STATE/instances names as its backing file."""
    used: set[Path] = set()
    if not state.instances.is_dir():
        return used
    for disk in state.instances.glob("*/*"):
        if disk.name.startswith(".") or not disk.is_file():
            continue
        try:
            header = parse_qcow2_header(read_head(str(disk)))
        except (HeaderError, OSError):
            continue  # not a qcow2 (console logs and the like)
        if header.backing_file:
            backing = Path(header.backing_file)
            used.add(Path(os.path.realpath(disk.parent / backing)))
    return used


def cached_bases(state: StateDir) -> list[Path]:
    if not state.images.is_dir():
        return []
    return sorted(
        path
        for path in state.images.glob("sha256-*")
        if path.is_file() and not path.name.endswith(".lock")
    )


def collect_garbage(
    state: StateDir,
    cache: ImageCache,
    grace_seconds: float,
    *,
    dry_run: bool,
    now: float | None = None,
) -> GcReport:
    """Remove (or list, when `dry_run`) unused cached bases older than the grace period."""
    now = time.time() if now is None else now
    report = GcReport()
    used = bases_in_use(state)
    for base in cached_bases(state):
        real = Path(os.path.realpath(base))
        if real in used:
            report.in_use.append(base)
            continue
        if now - base.stat().st_mtime < grace_seconds:
            report.too_young.append(base)
            continue
        if dry_run:
            report.removed.append(base)
            continue
        with cache.entry_lock(base):
            if real in bases_in_use(state):  # a disk was built on it meanwhile
                report.in_use.append(base)
                continue
            base.unlink(missing_ok=True)
            base.with_name(base.name + ".lock").unlink(missing_ok=True)
            report.removed.append(base)
            LOG.info("removed unused base %s", base.name)
    if not dry_run and state.images.is_dir():
        targets = {_target_of(leftover) for leftover in state.images.glob(".*.tmp")}
        for target in sorted(targets):
            report.leftovers.extend(remove_leftovers(target))
        # lock files of entries that never came to be (a refused image, say); safe because
        # the caller holds the state directory's lock, which every fetching process holds too
        for lock in state.images.glob("sha256-*.lock"):
            if not lock.with_name(lock.name.removesuffix(".lock")).exists():
                lock.unlink(missing_ok=True)
                report.leftovers.append(lock)
    return report


def _target_of(leftover: Path) -> Path:
    """The file a temporary `.NAME.<pid>.<random>.tmp` was being written for."""
    return leftover.with_name(leftover.name[1:].rsplit(".", 3)[0])
