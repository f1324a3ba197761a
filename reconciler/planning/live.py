"""The steps that change disks and a running domain in place: the boot and data disks
(made, grown, replaced), the live changes (medium, memory, vCPUs, disks and NICs), and the
files nothing uses any more. Pure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reconciler.layout import InstancePaths
from reconciler.model.actual import DiskFacts, DomainFacts, InstanceActual
from reconciler.model.machine import CONFIG_DRIVE_TARGET, Machine
from reconciler.model.resolved import ResolvedInstance
from reconciler.planning.context import PlanContext
from reconciler.planning.machine import (
    live_memory_change,
    live_nic_change,
    live_vcpu_change,
    with_config_drive,
)
from reconciler.planning.removal import removable_files
from reconciler.planning.steps import (
    AttachDisk,
    AttachNic,
    ChangeMedium,
    CreateDataDisk,
    CreateOverlay,
    DetachDisk,
    DetachNic,
    FetchBase,
    MoveDiskAside,
    RemoveFiles,
    ResizeDisk,
    SetMemory,
    SetVcpus,
    Step,
)


def live_changes(
    name: str, live: Machine | None, wanted: Machine
) -> tuple[list[Step], Machine | None]:
    """The steps that change the running domain (`live`) towards `wanted` without a restart,
    and what it is after them. One branch per live-class change."""
    if live is None:
        return [], None
    steps: list[Step] = []
    after = live
    # a rebuilt config drive: a medium change
    drive, running_drive = wanted.config_drive_path, live.config_drive_path
    if drive is not None and running_drive is not None and running_drive != drive:
        steps.append(ChangeMedium(name, CONFIG_DRIVE_TARGET, Path(drive)))
        after = with_config_drive(after, drive)
    # memory within the maximum: the balloon
    if live_memory_change(live, wanted):
        steps.append(SetMemory(name, wanted.memory_kib))
        after = dataclasses.replace(after, memory_kib=wanted.memory_kib)
    # vCPUs within the maximum
    if live_vcpu_change(live, wanted):
        steps.append(SetVcpus(name, wanted.vcpus))
        after = dataclasses.replace(after, vcpus=wanted.vcpus)
    # data disks on a bus that takes hot-plugging: attached and detached
    running = {disk.path: disk for disk in live.data_disks}
    disks = dict(running)
    for disk in wanted.data_disks:
        if disk.path not in running and disk.hotpluggable:
            steps.append(AttachDisk(name, disk))
            disks[disk.path] = disk
    wanted_paths = {disk.path for disk in wanted.data_disks}
    for path, disk in running.items():
        if path not in wanted_paths and disk.hotpluggable:
            steps.append(DetachDisk(name, disk))
            del disks[path]
    others = tuple(disk for disk in after.disks if not disk.is_data_disk)
    after = dataclasses.replace(after, disks=others + tuple(disks.values()))
    # NICs added at the end or removed from the end: attached and detached
    if live_nic_change(live, wanted):
        kept = min(len(live.nics), len(wanted.nics))
        steps += [DetachNic(name, nic, i) for i, nic in enumerate(live.nics) if i >= kept]
        steps += [AttachNic(name, nic, i) for i, nic in enumerate(wanted.nics) if i >= kept]
        after = dataclasses.replace(after, nics=wanted.nics)
    return steps, after


def disk_steps(
    resolved: ResolvedInstance,
    actual: InstanceActual,
    context: PlanContext,
    shape: Machine,
    replacing: str | None,
    starting: bool,
    *,
    online: bool,
) -> list[Step]:
    """The boot disk (fetched base, overlay, a replacement, growth) and the data disks (made
    empty, grown)."""
    spec = resolved.spec
    steps: list[Step] = []
    paths, overlay = context.paths, actual.overlay
    fetch = FetchBase(spec.name, spec.image, resolved.base_path, resolved.source_size)
    if replacing is not None:
        aside = paths.aside(aside_base(overlay))
        steps.append(MoveDiskAside(spec.name, paths.disk, aside, replacing))
    if overlay is None or replacing is not None:
        if not resolved.base_cached:
            steps.append(fetch)
        steps.append(
            CreateOverlay(
                spec.name,
                paths.disk,
                spec.image,
                resolved.base_path,
                spec.image.cached_format.value,
                spec.disk_bytes,
            )
        )
    else:
        if not resolved.base_cached and starting:
            steps.append(fetch)
        if overlay.virtual_size < spec.disk_bytes:
            steps.append(
                ResizeDisk(spec.name, paths.disk, overlay.virtual_size, spec.disk_bytes, online)
            )
    existing = {disk.path: disk for disk in actual.data_disks}
    for disk_spec, device in zip(spec.disks, shape.data_disks, strict=True):
        path = Path(device.path)
        found = existing.get(device.path)
        if found is None:
            steps.append(CreateDataDisk(spec.name, path, device.format, disk_spec.size_bytes))
        elif found.virtual_size < disk_spec.size_bytes:
            growth = ResizeDisk(
                spec.name, path, found.virtual_size, disk_spec.size_bytes, online, device.target,
                device.format,
            )  # fmt: skip
            steps.append(growth)
    return steps


def removals(
    name: str,
    actual: InstanceActual,
    domain: DomainFacts | None,
    drive: Path | None,
    shape: Machine,
    live_after: Machine | None,
    paths: InstancePaths,
    recorded: frozenset[str] = frozenset(),
) -> tuple[list[Step], tuple[str, ...]]:
    """Files nothing uses once the plan is carried out: replaced config drives (but those a
    snapshot's definition names), and data disks
    that left the manifest with deletionPolicy: delete (once detached); and a note for each
    file the definition names that is not the instance's own (left in place)."""
    steps: list[Step] = []
    notes: tuple[str, ...] = ()
    # a config drive a snapshot's definition names stays for a revert to put back
    # (and the one a snapshot this plan takes records)
    in_use = set(actual.snapshot_drives | recorded) | ({drive.name} if drive is not None else set())
    if live_after is not None and live_after.config_drive_path is not None:
        in_use.add(Path(live_after.config_drive_path).name)
    stale = sorted(actual.config_drives - in_use)
    if stale:
        drives = tuple(paths.directory / n for n in stale)
        steps.append(RemoveFiles(name, drives, paths.directory))
    if domain is not None:
        wanted = {disk.path for disk in shape.data_disks}
        running = set() if live_after is None else {d.path for d in live_after.data_disks}
        doomed, notes = removable_files(
            (
                disk.path
                for disk in domain.definition.data_disks
                if disk.delete_when_removed and disk.path not in wanted and disk.path not in running
            ),
            paths.directory,
        )
        if doomed:
            steps.append(
                RemoveFiles(name, doomed, paths.directory, "data disk (deletionPolicy: delete)")
            )
    return steps, notes


def aside_base(overlay: DiskFacts | None) -> str:
    """The base a replaced boot disk was built on, as its new name says it."""
    return Path(overlay.backing_file or "unknown").name if overlay is not None else "unknown"
