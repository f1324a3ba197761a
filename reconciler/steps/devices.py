"""Steps on data disks and on a running domain's devices: a new empty disk, a boot disk moved
aside for its replacement, live memory and vCPUs, disks attached and detached, autostart."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.drivers.base import Driver
from reconciler.fileops import fsync_directory, publish, remove_leftovers, temporary_path
from reconciler.images.qemuimg import QemuImg
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
    record = driver.lookup(step.instance)
    if record is None or record.live is None:
        return "domain not running: the disk is attached at its next start"
    if any(disk.path == step.disk.path for disk in record.live.disks):
        return f"disk {step.disk.target} already attached"
    driver.attach_disk(step.instance, step.disk)
    return f"attached disk {step.disk.target} ({Path(step.disk.path).name}) live"


def detach_disk(step: DetachDisk, driver: Driver) -> str:
    record = driver.lookup(step.instance)
    if record is None or record.live is None:
        return "domain not running: the disk is gone at its next start"
    if not any(disk.path == step.disk.path for disk in record.live.disks):
        return f"disk {step.disk.target} already detached"
    driver.detach_disk(step.instance, step.disk)
    return f"detached disk {step.disk.target} live (its file {Path(step.disk.path).name} is kept)"


def attach_nic(step: AttachNic, driver: Driver) -> str:
    record = driver.lookup(step.instance)
    if record is None or record.live is None:
        return "domain not running: the interface is there at its next start"
    if any(nic.mac == step.nic.mac for nic in record.live.nics):
        return f"network interface {step.index} already attached"
    driver.attach_nic(step.instance, step.nic, step.index)
    return f"attached network interface {step.index} ({step.nic.mac}) live"


def detach_nic(step: DetachNic, driver: Driver) -> str:
    record = driver.lookup(step.instance)
    if record is None or record.live is None:
        return "domain not running: the interface is gone at its next start"
    if not any(nic.mac == step.nic.mac for nic in record.live.nics):
        return f"network interface {step.index} already detached"
    driver.detach_nic(step.instance, step.nic, step.index)
    return f"detached network interface {step.index} ({step.nic.mac}) live"


def set_autostart(step: SetAutostart, driver: Driver) -> str:
    record = driver.lookup(step.instance)
    if record is not None and record.autostart is None:
        return (
            "autostart ignored: with the embedded driver no libvirtd starts domains at boot "
            "(the reconciler daemon does)"
        )
    driver.set_autostart(step.instance, step.autostart)
    return f"autostart {'enabled' if step.autostart else 'disabled'}"
