"""The typed machine description rendered as a QEMU command line (the QMP driver's twin of
libvirt_xml). Pure: an argument list, never a shell string.

Every image is opened with -blockdev and an explicit format; the command line starts from
-nodefaults and -no-user-config and is sandboxed (-sandbox on, no spawning, no privilege
gain). The process is driven over its QMP socket; a guest power-off leaves it alive in the
`shutdown` run state (-no-shutdown) and a guest panic pauses it (`guest-panicked`), so that
the stop reason can be read back after the fact, as libvirt's shutoff reasons can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from reconciler.drivers.libvirt_xml import (
    GUEST_AGENT_CHANNEL,
    NIC_SLOT_BASE,
    QEMU_NIC_DEVICES,
    hostfwd_rule,
)
from reconciler.model.desired import (
    Accelerator,
    BootDevice,
    CpuMode,
    CpuSpec,
    Firmware,
    Graphics,
    NicType,
)
from reconciler.model.machine import Disk, Machine, Nic

EMULATOR = "/usr/bin/qemu-system-x86_64"
DISK_SLOT_BASE = 0x04  # virtio disks, in target order (NICs sit where they do under libvirt)


class UnsupportedByQemuDriver(ValueError):
    """The machine asks for something the QMP driver cannot run (the message names it)."""


@dataclass(frozen=True, slots=True)
class ProcessFiles:
    """Where one instance's QEMU keeps its control files (in its instance directory)."""

    qmp_socket: str
    pidfile: str
    guest_agent_socket: str


def unsupported(machine: Machine) -> list[str]:
    """What in `machine` the QMP driver cannot express, as "field: why" (empty: all of it)."""
    problems = []
    for index, nic in enumerate(machine.nics):
        if nic.type is not NicType.USER:
            problems.append(
                f"networks[{index}].type {nic.type.value}: the QMP driver runs user-mode "
                "networking only (libvirt networks, bridges and direct devices need libvirt)"
            )
    if machine.firmware is Firmware.UEFI:
        problems.append("firmware uefi: the QMP driver boots BIOS guests only")
    if machine.max_vcpus is not None and machine.max_vcpus != machine.vcpus:
        problems.append("maxVcpus: the QMP driver does not plug vCPUs into a running guest")
    return problems


def render_qemu_argv(machine: Machine, files: ProcessFiles, emulator: str = EMULATOR) -> list[str]:
    """The command line that runs `machine` (raises UnsupportedByQemuDriver for what
    `unsupported` lists)."""
    problems = unsupported(machine)
    if problems:
        raise UnsupportedByQemuDriver("; ".join(problems))
    accel = "kvm" if machine.accelerator is Accelerator.KVM else "tcg"
    argv = [
        emulator,
        "-name", f"guest={machine.name},debug-threads=on",
        "-nodefaults", "-no-user-config",
        "-machine", f"{machine.machine_type},usb=off",
        "-accel", accel,
        *_cpu(machine.cpu),
        "-m", _memory(machine),
        "-smp", str(machine.vcpus),
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-display", "none",
        "-no-shutdown",
        "-action", "panic=pause",
        "-chardev", f"socket,id=qmp,path={files.qmp_socket},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-pidfile", files.pidfile,
        "-msg", "timestamp=on",
    ]  # fmt: skip
    if machine.uuid is not None:
        argv += ["-uuid", machine.uuid]
    argv += _disks(machine)
    argv += _nics(machine)
    if machine.console_log is not None:
        argv += ["-chardev", f"file,id=serial0,path={machine.console_log}"]
        argv += ["-serial", "chardev:serial0"]
    if machine.graphics is Graphics.VNC:
        argv += ["-vga", "std", "-vnc", "127.0.0.1:0,to=99"]
    if machine.max_memory_kib is not None:
        argv += ["-device", "virtio-balloon-pci,id=balloon0"]
    if machine.rng:
        argv += ["-object", "rng-builtin,id=rng0"]  # getrandom(): no device node needed
        argv += ["-device", "virtio-rng-pci,rng=rng0"]
    if machine.watchdog is not None:
        argv += ["-device", machine.watchdog.model]
        argv += ["-action", f"watchdog={machine.watchdog.action.value}"]  # QEMU's words
    if machine.guest_agent:
        argv += ["-chardev", f"socket,id=qga0,path={files.guest_agent_socket},server=on,wait=off"]
        argv += ["-device", "virtio-serial-pci,id=serial1"]
        argv += ["-device", f"virtserialport,chardev=qga0,name={GUEST_AGENT_CHANNEL}"]
    argv += ["-device", "pvpanic"]  # a guest panic reaches the QMP client (GUEST_PANICKED)
    return argv


def _cpu(cpu: CpuSpec) -> list[str]:
    """DEFAULT adds nothing (QEMU's own model, as under libvirt); host-model is QEMU's max."""
    if cpu.mode is CpuMode.DEFAULT:
        return []
    if cpu.mode is CpuMode.CUSTOM:
        return ["-cpu", cpu.model or "qemu64"]
    return ["-cpu", "host" if cpu.mode is CpuMode.HOST_PASSTHROUGH else "max"]


def _memory(machine: Machine) -> str:
    """The guest's memory; with a maximum, QEMU gets the maximum and the balloon the rest."""
    return f"{machine.max_memory_kib or machine.memory_kib}K"


def _bus(machine: Machine) -> str:
    return "pcie.0" if "q35" in machine.machine_type else "pci.0"


def _boot_index(machine: Machine, device: BootDevice) -> int | None:
    return machine.boot.index(device) + 1 if device in machine.boot else None


def _disks(machine: Machine) -> list[str]:
    argv: list[str] = []
    bus = _bus(machine)
    disks = sorted(machine.disks, key=lambda disk: disk.target)
    if any(disk.bus == "scsi" for disk in disks):
        argv += ["-device", f"virtio-scsi-pci,id=scsi0,bus={bus}"]
    if any(disk.bus == "sata" for disk in disks) and "q35" not in machine.machine_type:
        argv += ["-device", f"ich9-ahci,id=sata0,bus={bus}"]
    virtio_slot = DISK_SLOT_BASE
    sata_port = 0
    for disk in disks:
        argv += _blockdev(disk)
        device = _disk_device(machine, disk, bus, virtio_slot, sata_port)
        argv += ["-device", device]
        if disk.bus == "virtio":
            virtio_slot += 1
        if disk.bus == "sata":
            sata_port += 1
    return argv


def blockdev_nodes(disk: Disk) -> tuple[dict[str, object], dict[str, object]]:
    """The file node and the format node of one image (its backing chain, recorded in the
    qcow2 header with its format, is opened by QEMU under the format node), as -blockdev and
    QMP's blockdev-add take them."""
    protocol: dict[str, object] = {
        "driver": "file",
        "filename": disk.path,
        "node-name": f"file-{disk.target}",
    }
    if disk.read_only:
        protocol["read-only"] = True
    elif disk.device == "disk":
        protocol["discard"] = "unmap"
    node: dict[str, object] = {
        "driver": disk.format or "raw",
        "file": f"file-{disk.target}",
        "node-name": disk.target,
    }
    if disk.read_only:
        node["read-only"] = True
    return protocol, node


def _blockdev(disk: Disk) -> list[str]:
    protocol, node = blockdev_nodes(disk)
    return [
        "-blockdev", json.dumps(protocol, separators=(",", ":")),
        "-blockdev", json.dumps(node, separators=(",", ":")),
    ]  # fmt: skip


def hotplug_disk_device(machine: Machine, disk: Disk) -> dict[str, object]:
    """device_add's arguments for a data disk plugged into running `machine`."""
    if disk.bus == "scsi":
        return {"driver": "scsi-hd", "drive": disk.target, "id": disk.target, "bus": "scsi0.0"}
    return {"driver": "virtio-blk-pci", "drive": disk.target, "id": disk.target}


def hotplug_nic(
    machine: Machine, nic: Nic, index: int
) -> tuple[dict[str, object], dict[str, object]]:
    """netdev_add's and device_add's arguments for NIC `index` plugged into `machine`."""
    netdev = f"net{index}"
    device: dict[str, object] = {
        "driver": QEMU_NIC_DEVICES[nic.model],
        "netdev": netdev,
        "id": netdev,
        "mac": nic.mac,
        "bus": _bus(machine),
        "addr": f"{NIC_SLOT_BASE + index:#x}",
    }
    return {"type": "user", "id": netdev}, device


def _disk_device(machine: Machine, disk: Disk, bus: str, slot: int, port: int) -> str:
    kind = BootDevice.CDROM if disk.device == "cdrom" else BootDevice.HD
    boot = _boot_index(machine, kind) if disk.target in ("vda", "sda") else None
    boot_text = f",bootindex={boot}" if boot is not None else ""
    common = f"drive={disk.target},id={disk.target}{boot_text}"
    if disk.bus == "virtio":
        return f"virtio-blk-pci,{common},bus={bus},addr={slot:#x}"
    if disk.bus == "scsi":
        device = "scsi-cd" if disk.device == "cdrom" else "scsi-hd"
        return f"{device},{common},bus=scsi0.0"
    device = "ide-cd" if disk.device == "cdrom" else "ide-hd"
    controller = "ide" if "q35" in machine.machine_type else "sata0"
    return f"{device},{common},bus={controller}.{port}"


def _nics(machine: Machine) -> list[str]:
    argv: list[str] = []
    bus = _bus(machine)
    for index, nic in enumerate(machine.nics):
        netdev = f"net{index}"
        rules = "".join(f",hostfwd={hostfwd_rule(port)}" for port in nic.ports)
        argv += ["-netdev", f"user,id={netdev}{rules}"]
        boot = _boot_index(machine, BootDevice.NETWORK) if index == 0 else None
        boot_text = f",bootindex={boot}" if boot is not None else ""
        slot = NIC_SLOT_BASE + index
        argv += [
            "-device",
            f"{QEMU_NIC_DEVICES[nic.model]},netdev={netdev},id={netdev},mac={nic.mac},"
            f"bus={bus},addr={slot:#x}{boot_text}",
        ]
    return argv
