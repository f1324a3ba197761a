"""A manifest written from an existing domain (`reconcile export NAME`): what the schema can
express as fields, and comments for what it cannot. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.model.desired import BootDevice, CpuMode, Firmware, Graphics, NicType
from reconciler.model.machine import (
    BOOT_DISK_TARGET,
    CONFIG_DRIVE_TARGET,
    LIBVIRT_DEFAULT_CPU,
    Machine,
)
from reconciler.sizes import format_size

SCHEMA_ID = "https://reconciler.invalid/schemas/instance.schema.json"


@dataclass(frozen=True, slots=True)
class ExportFacts:
    """What the manifest needs beside the definition: read from the host by the caller."""

    running: bool
    autostart: bool | None
    image_source: str | None  # the boot disk's backing file, else the boot disk itself
    image_format: str | None
    disk_bytes: int | None  # the boot disk's virtual size
    instance_disk: str  # where this state directory keeps the instance's boot disk
    image_sha256: str | None = None  # known when the base is an entry of the image cache
    cached: bool = False  # the base is an entry of the image cache (not a source to name)


def export_manifest(machine: Machine, facts: ExportFacts) -> str:
    import yaml

    spec: dict[str, Any] = {
        "state": "running" if facts.running else "stopped",
        "vcpus": machine.vcpus,
        "memory": format_size(machine.memory_kib * 1024),
    }
    notes: list[str] = []
    if machine.max_memory_kib is not None:
        spec["maxMemory"] = format_size(machine.max_memory_kib * 1024)
    if machine.max_vcpus is not None:
        spec["maxVcpus"] = machine.max_vcpus
    if machine.cpu.mode is not CpuMode.DEFAULT and machine.cpu != LIBVIRT_DEFAULT_CPU:
        cpu: dict[str, str] = {"mode": machine.cpu.mode.value}
        if machine.cpu.model is not None:
            cpu["model"] = machine.cpu.model
        spec["cpu"] = cpu
    if "q35" in machine.machine_type:
        spec["machine"] = "q35"
    elif not machine.machine_type.startswith("pc"):
        notes.append(f"machine type {machine.machine_type}: only pc and q35 can be expressed")
    if machine.firmware is Firmware.UEFI:
        spec["firmware"] = "uefi"
    if machine.boot != (BootDevice.HD,):
        spec["boot"] = [device.value for device in machine.boot]
    if machine.accelerator is not None:
        notes.append(
            f"the domain runs under {machine.accelerator.value}; the manifest leaves the "
            "choice to the reconciler (accelerator: auto), set accelerator to pin it"
        )
    spec["image"], spec["disk"] = _image_and_disk(machine, facts, notes)
    spec["networks"] = [_nic(nic) for nic in machine.nics]
    for disk in machine.disks:
        if disk.target in (BOOT_DISK_TARGET, CONFIG_DRIVE_TARGET):
            continue
        notes.append(
            f"{disk.device} {disk.target} ({disk.bus}) at {disk.path}: data disks are made "
            "by the reconciler in the instance directory (spec.disks), an existing file "
            "cannot be named"
        )
    if machine.config_drive_path is not None:
        notes.append(
            f"config drive {machine.config_drive_path}: its cloud-init content cannot be read "
            "back; write it as spec.cloudInit"
        )
    if machine.description is not None:
        spec["description"] = machine.description
    if machine.graphics is Graphics.VNC:
        spec["graphics"] = "vnc"
    if machine.rng:
        spec["rng"] = True
    if machine.guest_agent:
        spec["guestAgent"] = True
    if machine.watchdog is not None:
        spec["watchdog"] = {
            "model": machine.watchdog.model,
            "action": machine.watchdog.action.value,
        }
    if facts.autostart:
        spec["autostart"] = True
    metadata: dict[str, Any] = {"name": machine.name}
    if machine.marker is not None and machine.marker.labels:  # recorded by a reconciler
        metadata["labels"] = dict(machine.marker.labels)
    document = {
        "apiVersion": "reconciler/v1alpha1",
        "kind": "Instance",
        "metadata": metadata,
        "spec": spec,
    }
    head = [
        f"# yaml-language-server: $schema={SCHEMA_ID}",
        f"# Written by `reconcile export {machine.name}` from the domain's definition.",
        "# What the schema cannot express:" if notes else "# Everything the domain has that",
    ]
    if notes:
        head += [f"#   - {note}" for note in notes]
    else:
        head[-1] += " the reconciler manages is expressed here."
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return "\n".join(head) + "\n" + body


def _image_and_disk(
    machine: Machine, facts: ExportFacts, notes: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    source = facts.image_source or "FILL-IN: the base image"
    if facts.cached and facts.image_source is not None:
        source = "FILL-IN: where the image comes from (a path or URL with this sha256)"
        notes.append(
            f"the base is the image cache's entry {Path(facts.image_source).name}: name where "
            "the image comes from (the cache is not a source); its sha256 is below"
        )
    image: dict[str, Any] = {"source": source, "format": facts.image_format or "qcow2"}
    if facts.image_sha256 is not None:
        image["sha256"] = facts.image_sha256
    boot = machine.boot_disk_path
    if facts.image_source is None:
        notes.append("the domain has no boot disk (vda) the reconciler can read")
    elif facts.image_source == boot:
        notes.append(
            f"the boot disk {boot} has no backing file: it is named as the base image, which "
            "a new instance boots from an overlay of; this domain cannot be adopted as it is "
            "(an instance's disk is an overlay of its image)"
        )
    if facts.image_sha256 is None:
        notes.append("no sha256 for the base image: add it to have the image checked")
    if boot is not None and boot != facts.instance_disk:
        notes.append(
            f"the boot disk is {boot}; the reconciler keeps an instance's boot disk at "
            f"{facts.instance_disk}: `reconcile adopt` moves it there, with the domain shut off "
            "(a rename: the same file system), onto the image cache's copy of its base"
        )
    size = facts.disk_bytes
    disk = {"size": format_size(size) if size is not None else "FILL-IN"}
    return image, disk


def _nic(nic: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": nic.type.value}
    if nic.type is not NicType.USER and nic.source is not None:
        entry["source"] = nic.source
    entry["model"] = nic.model.value
    entry["mac"] = nic.mac
    if nic.ports:
        entry["ports"] = [
            {"host": p.host, "guest": p.guest, **({"protocol": p.protocol.value})}
            for p in nic.ports
        ]
    return entry
