"""Steps on data disks and on a running domain's devices: a new empty disk, a boot disk moved
aside for its replacement, live memory and vCPUs, disks attached and detached, autostart."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from reconciler.drivers.base import Driver
from reconciler.fileops import fsync_directory, publish, remove_leftovers, temporary_path
from reconciler.images.qemuimg import QemuImg
from reconciler.model.actual import DomainFacts
from reconciler.model.machine import Machine
from reconciler.planning.steps import (
    AttachDisk,
    AttachNic,
    CreateDataDisk,
    DetachDisk,
    DetachNic,
    MoveDiskAside,
    SetAutostart,
    SetMemory,
    SetVcpus,
)
from reconciler.sizes import format_size


def create_data_disk(step: CreateDataDisk, qemu_img: QemuImg) -> str:
    if step.path.exists():
        return "data disk already exists"
    step.path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(step.path)
    temporary = temporary_path(step.path)
    try:
        qemu_img.create(temporary, step.format, step.size)
        publish(temporary, step.path)
    finally:
        temporary.unlink(missing_ok=True)
    return f"created data disk {step.path.name} ({format_size(step.size)})"


def move_disk_aside(step: MoveDiskAside) -> str:
    """Rename the boot disk (same directory: atomic); a name already taken gets a number."""
    if not step.path.exists():
        return "boot disk already moved aside"
    aside = step.aside
    number = 1
    while aside.exists():
        aside = step.aside.with_name(f"{step.aside.name}.{number}")
        number += 1
    os.rename(step.path, aside)
    fsync_directory(aside.parent)
    return f"moved the old boot disk aside to {aside.name} (kept until the next gc)"


def set_memory(step: SetMemory, driver: Driver) -> str:
    driver.set_memory(step.instance, step.memory_kib)
    return f"set memory to {format_size(step.memory_kib * 1024)} live"


def set_vcpus(step: SetVcpus, driver: Driver) -> str:
    driver.set_vcpus(step.instance, step.vcpus)
    return f"set vCPUs to {step.vcpus} live"


def attach_disk(step: AttachDisk, driver: Driver) -> str:
    return _plug(
        driver,
        step.instance,
        f"disk {step.disk.target} ({Path(step.disk.path).name})",
        lambda live: any(disk.path == step.disk.path for disk in live.disks),
        lambda: driver.attach_disk(step.instance, step.disk),
        attach=True,
    )


def detach_disk(step: DetachDisk, driver: Driver) -> str:
    return _plug(
        driver,
        step.instance,
        f"disk {step.disk.target}",
        lambda live: any(disk.path == step.disk.path for disk in live.disks),
        lambda: driver.detach_disk(step.instance, step.disk),
        attach=False,
        kept=f" (its file {Path(step.disk.path).name} is kept)",
    )


def attach_nic(step: AttachNic, driver: Driver) -> str:
    return _plug(
        driver,
        step.instance,
        f"network interface {step.index} ({step.nic.mac})",
        lambda live: any(nic.mac == step.nic.mac for nic in live.nics),
        lambda: driver.attach_nic(step.instance, step.nic, step.index),
        attach=True,
    )


def detach_nic(step: DetachNic, driver: Driver) -> str:
    return _plug(
        driver,
        step.instance,
        f"network interface {step.index} ({step.nic.mac})",
        lambda live: any(nic.mac == step.nic.mac for nic in live.nics),
        lambda: driver.detach_nic(step.instance, step.nic, step.index),
        attach=False,
    )


def _plug(
    driver: Driver,
    instance: str,
    what: str,
    present: Callable[[Machine], bool],
    act: Callable[[], None],
    *,
    attach: bool,
    kept: str = "",
) -> str:
    """Attach or detach a device of a running domain, unless it is so already."""
    record = driver.lookup(instance)
    live = record.live_definition if isinstance(record, DomainFacts) else None
    if live is None:
        where = "there" if attach else "gone"
        return f"domain not running: the {what.split(' (')[0]} is {where} at its next start"
    done = "attached" if attach else "detached"
    if present(live) is attach:
        return f"{what} already {done}"
    act()
    return f"{done} {what} live{kept}"


def set_autostart(step: SetAutostart, driver: Driver) -> str:
    record = driver.lookup(step.instance)
    if isinstance(record, DomainFacts) and record.autostart is None:
        return (
            "autostart ignored: with the embedded driver no libvirtd starts domains at boot "
            "(the reconciler daemon does)"
        )
    driver.set_autostart(step.instance, step.autostart)
    return f"autostart {'enabled' if step.autostart else 'disabled'}"
