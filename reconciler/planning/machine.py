"""From an instance spec to the machine that runs it, and the differences between two
machines in words. Pure."""

from __future__ import annotations

from dataclasses import dataclass, replace

from reconciler.model.desired import Accelerator, CpuMode, CpuSpec, InstanceSpec
from reconciler.model.machine import (
    BOOT_DISK_TARGET,
    CONFIG_DRIVE_TARGET,
    Disk,
    Machine,
    Nic,
    config_drive_disk,
)
from reconciler.sizes import format_size


@dataclass(frozen=True, slots=True)
class DomainLayout:
    """Where an instance's files are and how it runs: the inputs to its machine beside the
    spec."""

    disk_path: str
    console_log_path: str
    accelerator: Accelerator  # resolved: KVM or TCG
    config_drive_path: str | None = None  # the config drive's ISO, when the instance has one
    nics: tuple[Nic, ...] = ()  # with their MACs chosen


def build_machine(spec: InstanceSpec, layout: DomainLayout) -> Machine:
    """The machine `spec` asks for, without uuid and marker (its shape: what the digest
    covers)."""
    disks = [Disk(BOOT_DISK_TARGET, layout.disk_path, "qcow2")]
    if layout.config_drive_path is not None:
        disks.append(config_drive_disk(layout.config_drive_path))
    return Machine(
        name=spec.name,
        accelerator=layout.accelerator,
        vcpus=spec.vcpus,
        memory_kib=spec.memory_bytes // 1024,
        cpu=spec.cpu,
        disks=tuple(disks),
        nics=layout.nics,
        console_log=layout.console_log_path,
    )


def with_config_drive(machine: Machine, path: str) -> Machine:
    """`machine` with its config drive's medium at `path` (what a live medium change makes)."""
    disks = tuple(
        config_drive_disk(path) if disk.target == CONFIG_DRIVE_TARGET else disk
        for disk in machine.disks
    )
    return replace(machine, disks=disks)


# libvirt writes the default CPU out as this model in a definition that named none
_LIBVIRT_DEFAULT_CPU = CpuSpec(CpuMode.CUSTOM, "qemu64")


def shape_of(machine: Machine) -> Machine:
    """`machine` without its identity (uuid, marker), with the defaults a hypervisor fills in
    read as defaults: what two definitions compare on."""
    cpu = CpuSpec() if machine.cpu == _LIBVIRT_DEFAULT_CPU else machine.cpu
    return replace(machine, uuid=None, marker=None, cpu=cpu)


def describe_changes(current: Machine, wanted: Machine) -> tuple[str, ...]:
    """What redefining `current` as `wanted` changes, in words."""
    current, wanted = shape_of(current), shape_of(wanted)
    changes = []
    if current.vcpus != wanted.vcpus:
        changes.append(f"vcpus {current.vcpus} -> {wanted.vcpus}")
    if current.memory_kib != wanted.memory_kib:
        changes.append(
            f"memory {format_size(current.memory_kib * 1024)} -> "
            f"{format_size(wanted.memory_kib * 1024)}"
        )
    if current.accelerator != wanted.accelerator:
        before = current.accelerator.value if current.accelerator else "other"
        after = wanted.accelerator.value if wanted.accelerator else "other"
        changes.append(f"accelerator {before} -> {after}")
    if current.cpu != wanted.cpu:
        changes.append(f"cpu {_cpu(current)} -> {_cpu(wanted)}")
    if current.boot_disk_path != wanted.boot_disk_path:
        changes.append(f"disk {current.boot_disk_path} -> {wanted.boot_disk_path}")
    if current.config_drive_path != wanted.config_drive_path:
        before = _file_name(current.config_drive_path)
        changes.append(f"config drive {before} -> {_file_name(wanted.config_drive_path)}")
    if current.nics != wanted.nics:
        changes.append(f"network {_nics(current)} -> {_nics(wanted)}")
    return tuple(changes) or ("definition updated",)


def _cpu(machine: Machine) -> str:
    return machine.cpu.model or machine.cpu.mode.value


def _file_name(path: str | None) -> str:
    return "none" if path is None else path.rsplit("/", 1)[-1]


def _nics(machine: Machine) -> str:
    if not machine.nics:
        return "none"
    return "; ".join(
        f"{nic.type.value}{' ' + nic.source if nic.source else ''} {nic.model.value} {nic.mac}"
        + "".join(f" {port.describe()}" for port in nic.ports)
        for nic in machine.nics
    )
