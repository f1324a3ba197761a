"""Garbage collection of the image cache (Nova's image cache manager).

A cached base is removed when no disk in the state directory uses it as its backing file
(read from the disks' qcow2 headers) and it has not been used for the grace period (the mtime
of its verification record is refreshed every time it is used). The check is repeated under the
entry's lock just before removal, so a base that became used meanwhile is kept. Temporary
files left by dead processes are removed too, and boot disks that a replacement moved aside
(`disk.qcow2.replaced-...`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.fileops import remove_dead_leftovers
from reconciler.images.cache import ImageCache
from reconciler.images.diskheaders import (
    HeaderError,
    parse_qcow2_header,
    read_head,
    read_qcow2_snapshots,
)
from reconciler.images.qemuimg import QemuImg
from reconciler.layout import REPLACED_SUFFIX
from reconciler.statedir import StateDir

LOG = logging.getLogger(__name__)


@dataclass(slots=True)
class GcReport:
    """What a collection removed (or, dry, would remove) and what it kept, and why."""

    removed: list[Path] = field(default_factory=list)
    in_use: list[Path] = field(default_factory=list)
    too_young: list[Path] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)  # boot disks moved aside by a replace
    # snapshots of instances that have no domain any more, each DISK@LABEL: listed, and
    # removed only when asked (gc --snapshots)
    snapshots: list[Path] = field(default_factory=list)


def bases_in_use(state: StateDir, ignore: set[Path] | None = None) -> set[Path]:
    """Every file that a disk under STATE/instances (but those in `ignore`) names as its
    backing file."""
    used: set[Path] = set()
    if not state.instances.is_dir():
        return used
    for disk in state.instances.glob("*/*"):
        if disk.name.startswith(".") or not disk.is_file() or disk in (ignore or set()):
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
    managed: frozenset[str] | None = None,
    snapshots: bool = False,
) -> GcReport:
    """Remove (or list, when `dry_run`) unused cached bases older than the grace period.
    `managed`: the instances that have a domain (None: not known, snapshots are not looked
    at); the snapshots in the disks of the others are listed, and with `snapshots` removed
    (the disks themselves are kept, as their deletion policy said)."""
    now = time.time() if now is None else now
    report = GcReport()
    if managed is not None:
        report.snapshots.extend(
            _gone_snapshots(state, managed, cache.qemu_img, remove=snapshots and not dry_run)
        )
    # boot disks a replacement moved aside are kept until now; their bases may then go too
    for disk in (
        sorted(state.instances.glob(f"*/*.{REPLACED_SUFFIX}-*")) if state.instances.is_dir() else []
    ):
        if not dry_run:
            disk.unlink(missing_ok=True)
            LOG.info("removed replaced disk %s", disk)
        report.replaced.append(disk)
    used = bases_in_use(state, ignore=set(report.replaced))
    for base in cached_bases(state):
        real = Path(os.path.realpath(base))
        if real in used:
            report.in_use.append(base)
            continue
        if now - cache.records.last_used(base) < grace_seconds:
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
            cache.records.remove(base)
            base.with_name(base.name + ".lock").unlink(missing_ok=True)
            report.removed.append(base)
            LOG.info("removed unused base %s", base.name)
    report.leftovers.extend(_sweep_leftovers(state, dry_run=dry_run))
    return report


def _gone_snapshots(
    state: StateDir, managed: frozenset[str], qemu_img: QemuImg, *, remove: bool
) -> list[Path]:
    """The snapshots (DISK@LABEL) of the qcow2 disks of instances without a domain, removed
    with their records when `remove`."""
    found: list[Path] = []
    if not state.instances.is_dir():
        return found
    for directory in sorted(p for p in state.instances.iterdir() if p.is_dir()):
        if directory.name in managed:
            continue
        for disk in sorted(directory.glob("*.qcow2")):
            try:
                labels = [entry.name for entry in read_qcow2_snapshots(str(disk))]
            except (HeaderError, OSError):
                continue
            for label in labels:
                if remove:
                    qemu_img.snapshot("delete", disk, label)
                    LOG.info("removed snapshot %s of %s (its instance is gone)", label, disk)
                found.append(Path(f"{disk}@{label}"))
        if remove:
            for record in directory.glob("snapshot-*.json"):
                record.unlink(missing_ok=True)
    return found


def _sweep_leftovers(state: StateDir, *, dry_run: bool) -> list[Path]:
    """Temporary files of dead processes (in the cache and in every instance directory), and
    lock files of cache entries that never came to be (a refused image, say). Removing those
    is safe because the caller holds the state directory's lock, which every fetching
    process holds too."""
    directories = [
        directory
        for parent in (state.images, state.instances)
        if parent.is_dir()
        for directory in (parent, *sorted(p for p in parent.iterdir() if p.is_dir()))
    ]
    found = [
        leftover
        for directory in directories
        for leftover in remove_dead_leftovers(directory, dry_run=dry_run)
    ]
    if state.images.is_dir():
        for lock in sorted(state.images.glob("sha256-*.lock")):
            if not lock.with_name(lock.name.removesuffix(".lock")).exists():
                if not dry_run:
                    lock.unlink(missing_ok=True)
                found.append(lock)
    return found
