"""Data disks as devices: each under a stable target. Pure.

A disk keeps the target the current definition gives its file, so adding or removing another
disk never moves it; a new disk takes the first free name of its bus's family (vdb, vdc, ...
for virtio; sdb, sdc, ... for scsi and sata, sda being the config drive).
"""

from __future__ import annotations

import string
from pathlib import Path

from reconciler.model.desired import DataDiskSpec, DeletionPolicy, DiskBus
from reconciler.model.machine import BOOT_DISK_TARGET, CONFIG_DRIVE_TARGET, Disk, Machine


def data_disk_devices(
    disks: tuple[DataDiskSpec, ...], directory: Path, current: Machine | None
) -> tuple[Disk, ...]:
    """The devices of `disks`, whose files are in `directory`, with their targets."""
    kept = {} if current is None else {disk.path: disk.target for disk in current.disks}
    taken = {BOOT_DISK_TARGET, CONFIG_DRIVE_TARGET}
    wanted = [(spec, str(directory / spec.file_name)) for spec in disks]
    targets: dict[str, str] = {}
    for spec, path in wanted:  # first the disks that already have a target of their family
        target = kept.get(path)
        if target is not None and target[:2] == _family(spec.bus) and target not in taken:
            targets[path] = target
            taken.add(target)
    for spec, path in wanted:
        if path not in targets:
            family = _family(spec.bus)
            letter = next(c for c in string.ascii_lowercase[1:] if family + c not in taken)
            targets[path] = family + letter
            taken.add(family + letter)
    return tuple(
        Disk(
            targets[path],
            path,
            spec.format.value,
            bus=spec.bus.value,
            delete_when_removed=spec.deletion_policy is DeletionPolicy.DELETE,
        )
        for spec, path in wanted
    )


def _family(bus: DiskBus) -> str:
    return "vd" if bus is DiskBus.VIRTIO else "sd"
