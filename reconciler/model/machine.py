"""The typed machine description: what a domain is, independent of any hypervisor's syntax.

The plan builds one from a spec; a driver renders it (libvirt XML, or QEMU arguments) to
define the domain, and parses what the hypervisor reports back into the same type. The spec
digest in the ownership marker is computed over it, so it does not depend on how a driver
spells a definition. Pure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from reconciler.model.desired import (
    Accelerator,
    BootDevice,
    CpuMode,
    CpuSpec,
    Firmware,
    Graphics,
    NicModel,
    NicType,
    PortForward,
    WatchdogSpec,
)

BOOT_DISK_TARGET = "vda"
CONFIG_DRIVE_TARGET = "sda"  # a read-only SATA CD-ROM
MARKER_NAMESPACE = "urn:x-reconciler:instance:1"  # of the marker in a domain's metadata
# libvirt writes the default CPU out as this model in a definition that named none
LIBVIRT_DEFAULT_CPU = CpuSpec(CpuMode.CUSTOM, "qemu64")


@dataclass(frozen=True, slots=True)
class OwnershipMarker:
    """The project's mark on a domain. `state_dir_id` names the state directory that made the
    domain (None in a marker without one, which proves nothing)."""

    manifest: str
    spec_digest: str
    state_dir_id: str | None = None
    instance_id: str | None = None  # the config drive's cloud-init instance-id, when it has one
    labels: tuple[tuple[str, str], ...] = ()  # the manifest's metadata.labels (for export)


@dataclass(frozen=True, slots=True)
class Disk:
    """A block device: `target` is its stable guest-visible name (vda, vdb, sda...)."""

    target: str
    path: str
    format: str  # qcow2 | raw
    bus: str = "virtio"
    device: str = "disk"  # disk | cdrom
    read_only: bool = False
    delete_when_removed: bool = False  # a data disk whose file goes when it leaves the manifest

    @property
    def is_data_disk(self) -> bool:
        return self.device == "disk" and self.target != BOOT_DISK_TARGET

    @property
    def hotpluggable(self) -> bool:
        """Whether it can be attached to and detached from a running domain."""
        return self.bus in ("virtio", "scsi")


def config_drive_disk(path: str) -> Disk:
    """The config drive as a device: a read-only SATA CD-ROM."""
    return Disk(CONFIG_DRIVE_TARGET, path, "raw", bus="sata", device="cdrom", read_only=True)


@dataclass(frozen=True, slots=True)
class Nic:
    """A network interface: `source` is the libvirt network, bridge or host device (None for
    user-mode); `ports` are host ports forwarded to the guest (user-mode only)."""

    type: NicType
    mac: str
    model: NicModel = NicModel.VIRTIO
    source: str | None = None
    ports: tuple[PortForward, ...] = ()

    @property
    def hotpluggable(self) -> bool:
        """Whether it can be attached to and detached from a running domain (an interface
        libvirt models; port forwards are QEMU arguments, fixed at start)."""
        return not self.ports


@dataclass(frozen=True, slots=True)
class Machine:
    """One domain's definition. `accelerator` is KVM or TCG (None when a foreign domain uses
    something else); `uuid` and `marker` are identity, not shape: the digest leaves them out."""

    name: str
    accelerator: Accelerator | None
    vcpus: int
    memory_kib: int
    cpu: CpuSpec = field(default_factory=CpuSpec)
    machine_type: str = "pc"
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    console_log: str | None = None  # the serial console, written to this file
    max_vcpus: int | None = None  # None: vcpus is the maximum
    max_memory_kib: int | None = None  # None: memory is the maximum (no room for the balloon)
    firmware: Firmware = Firmware.BIOS
    nvram: str | None = None  # UEFI variables, a file of the instance
    boot: tuple[BootDevice, ...] = (BootDevice.HD,)
    description: str | None = None
    graphics: Graphics = Graphics.NONE
    rng: bool = False
    guest_agent: bool = False
    watchdog: WatchdogSpec | None = None
    # recorded with the ownership marker, not seen by the hypervisor: what deleting it may do
    protected: bool = False  # nothing deletes the domain
    delete_disks: bool = False  # state: absent and prune remove its disks too
    shutdown_timeout_seconds: int | None = None  # how long a prune waits for its guest
    asked_running: bool | None = None  # the manifest last asked for it to run (None: unknown)
    uuid: str | None = None
    marker: OwnershipMarker | None = None

    @property
    def data_disks(self) -> tuple[Disk, ...]:
        return tuple(disk for disk in self.disks if disk.is_data_disk)

    def disk(self, target: str) -> Disk | None:
        return next((disk for disk in self.disks if disk.target == target), None)

    @property
    def config_drive_path(self) -> str | None:
        disk = self.disk(CONFIG_DRIVE_TARGET)
        return None if disk is None else disk.path

    @property
    def boot_disk_path(self) -> str | None:
        disk = self.disk(BOOT_DISK_TARGET)
        return None if disk is None else disk.path

    def spec_digest(self, labels: tuple[tuple[str, str], ...] = ()) -> str:
        """A digest of the machine's shape (everything but its uuid and marker), and of the
        manifest's labels the marker records, when there are any (a digest without labels is
        what it was before the marker recorded them)."""
        shape = _plain(self)
        shape["uuid"] = shape["marker"] = None
        if labels:
            shape["labels"] = [list(label) for label in labels]
        canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """What dataclasses.asdict makes of `value`, as JSON sees it (tuples as lists), without
    its deep copies: a digest is computed for every instance of every pass."""
    if type(value) in _SCALARS:
        return value
    names = _field_names(type(value))
    if names is not None:
        late = _LATE_FIELDS.get(type(value), ())
        return {
            name: _plain(getattr(value, name))
            for name in names
            if not (name in late and getattr(value, name) is None)
        }
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    return value


_SCALARS = frozenset({str, int, float, bool, type(None)})

# fields added after domains were defined with this digest: left out while unset (None), so
# that a new version does not read every existing domain as changed
_LATE_FIELDS: dict[type, tuple[str, ...]] = {
    PortForward: ("guest_address",),
    Machine: ("watchdog",),
}


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(kind: type) -> tuple[str, ...] | None:
    """The fields of a dataclass type, None for any other type (kept per type)."""
    if kind not in _FIELD_NAMES:
        is_dataclass = dataclasses.is_dataclass(kind)
        _FIELD_NAMES[kind] = (
            tuple(f.name for f in dataclasses.fields(kind)) if is_dataclass else None
        )
    return _FIELD_NAMES[kind]
