"""The steps a plan is made of: what each changes, in words (`describe`) and in data (what
steps.apply needs to carry it out). Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from reconciler.model.accel import AcceleratorChoice
from reconciler.model.desired import ImageSource
from reconciler.model.machine import Disk, Machine, Nic
from reconciler.planning.cloudinit import DriveContent
from reconciler.planning.disruption import (
    CLASS_DISRUPTION,
    Disruption,
    FieldChange,
    Review,
    most_disruptive,
)
from reconciler.planning.machine import Change, ChangeClass
from reconciler.sizes import format_size


class StepKind(enum.StrEnum):
    RECOVER = "recover"
    RESUME = "resume"
    FETCH_BASE = "fetch-base"
    CREATE_OVERLAY = "create-overlay"
    RESIZE_DISK = "resize-disk"
    CREATE_DATA_DISK = "create-data-disk"
    MOVE_DISK_ASIDE = "move-disk-aside"
    SET_MEMORY = "set-memory"
    SET_VCPUS = "set-vcpus"
    ATTACH_DISK = "attach-disk"
    DETACH_DISK = "detach-disk"
    SET_AUTOSTART = "set-autostart"
    ATTACH_NIC = "attach-nic"
    DETACH_NIC = "detach-nic"
    BUILD_CONFIG_DRIVE = "build-config-drive"
    CHANGE_MEDIUM = "change-medium"
    REMOVE_FILES = "remove-files"
    DEFINE = "define"
    START = "start"
    STOP = "stop"
    UNDEFINE = "undefine"
    THAW = "thaw-filesystems"
    SNAPSHOT = "snapshot"
    DELETE_SNAPSHOTS = "delete-snapshots"
    RELEASE_HOLD = "release-hold"


@dataclass(frozen=True, slots=True)
class RecoverDomain:
    """Clear a start or shutdown that a killed process left half-done (domain paused in
    libvirt's `starting-up` or `shutting-down`), so that the instance can converge."""

    kind: ClassVar[StepKind] = StepKind.RECOVER
    instance: str
    reason: str

    def describe(self) -> str:
        what = "start" if self.reason == "starting-up" else "shutdown"
        return (
            f"recover an interrupted {what} (domain paused in {self.reason} with no one "
            "finishing it): tear the domain down"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.RESTART, (FieldChange("power", "running", "off"),)


@dataclass(frozen=True, slots=True)
class ResumeDomain:
    """Let a domain that QEMU paused on an I/O error (a full file system, typically) run
    again, once the file system of its disks has room: the guest goes on where it stopped."""

    kind: ClassVar[StepKind] = StepKind.RESUME
    instance: str
    disk_directory: Path

    def describe(self) -> str:
        return (
            "resume the domain paused on an I/O error (the guest goes on where it stopped), "
            f"once {self.disk_directory} has room"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.NONE, (FieldChange("power", "paused (I/O error)", "running"),)


@dataclass(frozen=True, slots=True)
class FetchBase:
    kind: ClassVar[StepKind] = StepKind.FETCH_BASE
    instance: str
    image: ImageSource
    cache_path: Path
    size: int | None = None  # bytes to download, when the source says

    def describe(self) -> str:
        named = f"{self.image.name} from " if self.image.name is not None else ""
        return (
            f"fetch base image {named}{self.image.location} into the cache "
            f"(sha256 {(self.image.sha256 or '?')[:12]}..., {self.image.format.value}"
            + (f", stored as {self.image.convert_to.value}" if self.image.convert_to else "")
            + (f", {format_size(self.size)}" if self.size is not None else "")
            + ")"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.NONE, (FieldChange("base image", None, str(self.image.location)),)


@dataclass(frozen=True, slots=True)
class CreateOverlay:
    kind: ClassVar[StepKind] = StepKind.CREATE_OVERLAY
    instance: str
    path: Path
    image: ImageSource  # the base, verified (and fetched again if spoiled) before use
    base_path: Path
    base_format: str
    size: int

    def describe(self) -> str:
        base = self.base_path.name
        short = base[:19] + "..." if len(base) > 22 else base
        return f"create disk {self.path} ({format_size(self.size)}, qcow2 over {short})"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        change = FieldChange("disk", None, f"{self.path.name} {self.size} bytes")
        return Disruption.NONE, (change,)


@dataclass(frozen=True, slots=True)
class ResizeDisk:
    kind: ClassVar[StepKind] = StepKind.RESIZE_DISK
    instance: str
    path: Path
    current: int
    size: int
    online: bool
    target: str = "vda"
    format: str = "qcow2"

    def describe(self) -> str:
        how = "online, the guest sees it now" if self.online else "offline"
        return (
            f"grow disk {self.target} {format_size(self.current)} -> {format_size(self.size)} "
            f"({how})"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        change = FieldChange(f"disk {self.target} bytes", str(self.current), str(self.size))
        return (Disruption.LIVE if self.online else Disruption.NONE), (change,)


@dataclass(frozen=True, slots=True)
class CreateDataDisk:
    """A new, empty data disk."""

    kind: ClassVar[StepKind] = StepKind.CREATE_DATA_DISK
    instance: str
    path: Path
    format: str
    size: int

    def describe(self) -> str:
        return f"create data disk {self.path.name} ({format_size(self.size)}, empty {self.format})"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        change = FieldChange("data disk", None, f"{self.path.name} {self.size} bytes")
        return Disruption.NONE, (change,)


@dataclass(frozen=True, slots=True)
class MoveDiskAside:
    """Move the boot disk out of the way of a new one (kept until the next gc)."""

    kind: ClassVar[StepKind] = StepKind.MOVE_DISK_ASIDE
    instance: str
    path: Path
    aside: Path
    why: str

    def describe(self) -> str:
        return (
            f"REPLACE THE BOOT DISK, DESTROYING THE GUEST'S DISK CONTENTS ({self.why}; "
            f"allowReplace: true): {self.path.name} is moved to {self.aside.name}, kept until "
            "the next gc"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.REPLACE, (FieldChange("boot disk", self.path.name, self.aside.name),)


@dataclass(frozen=True, slots=True)
class SetMemory:
    kind: ClassVar[StepKind] = StepKind.SET_MEMORY
    instance: str
    memory_kib: int

    def describe(self) -> str:
        size = format_size(self.memory_kib * 1024)
        return f"set the running domain's memory to {size} (live, through the balloon)"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.LIVE, (FieldChange("running memory KiB", None, str(self.memory_kib)),)


@dataclass(frozen=True, slots=True)
class SetVcpus:
    kind: ClassVar[StepKind] = StepKind.SET_VCPUS
    instance: str
    vcpus: int

    def describe(self) -> str:
        return f"set the running domain's vCPUs to {self.vcpus} (live)"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.LIVE, (FieldChange("running vCPUs", None, str(self.vcpus)),)


@dataclass(frozen=True, slots=True)
class AttachDisk:
    kind: ClassVar[StepKind] = StepKind.ATTACH_DISK
    instance: str
    disk: Disk

    def describe(self) -> str:
        return f"attach disk {self.disk.target} ({Path(self.disk.path).name}) to the running domain"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.LIVE, (FieldChange(f"disk {self.disk.target}", None, self.disk.path),)


@dataclass(frozen=True, slots=True)
class DetachDisk:
    kind: ClassVar[StepKind] = StepKind.DETACH_DISK
    instance: str
    disk: Disk

    def describe(self) -> str:
        return (
            f"detach disk {self.disk.target} ({Path(self.disk.path).name}) from the running domain"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.LIVE, (FieldChange(f"disk {self.disk.target}", self.disk.path, None),)


@dataclass(frozen=True, slots=True)
class AttachNic:
    kind: ClassVar[StepKind] = StepKind.ATTACH_NIC
    instance: str
    nic: Nic
    index: int

    def describe(self) -> str:
        return f"attach network interface {self.index} ({self.nic.mac}) to the running domain"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        change = FieldChange(f"network interface {self.index}", None, self.nic.mac)
        return Disruption.LIVE, (change,)


@dataclass(frozen=True, slots=True)
class DetachNic:
    kind: ClassVar[StepKind] = StepKind.DETACH_NIC
    instance: str
    nic: Nic
    index: int

    def describe(self) -> str:
        return f"detach network interface {self.index} ({self.nic.mac}) from the running domain"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        change = FieldChange(f"network interface {self.index}", self.nic.mac, None)
        return Disruption.LIVE, (change,)


@dataclass(frozen=True, slots=True)
class SetAutostart:
    kind: ClassVar[StepKind] = StepKind.SET_AUTOSTART
    instance: str
    autostart: bool

    def describe(self) -> str:
        return f"{'enable' if self.autostart else 'disable'} libvirt's autostart"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        change = FieldChange("autostart", str(not self.autostart), str(self.autostart))
        return Disruption.NONE, (change,)


@dataclass(frozen=True, slots=True)
class BuildConfigDrive:
    """Write the config drive's ISO (mode 0600: user-data often holds secrets)."""

    kind: ClassVar[StepKind] = StepKind.BUILD_CONFIG_DRIVE
    instance: str
    path: Path
    content: DriveContent

    def describe(self) -> str:
        return f"build config drive {self.path.name} ({self.content.describe()})"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.NONE, (FieldChange("config drive file", None, self.path.name),)


@dataclass(frozen=True, slots=True)
class ChangeMedium:
    """Swap the running domain's config drive medium to the rebuilt ISO."""

    kind: ClassVar[StepKind] = StepKind.CHANGE_MEDIUM
    instance: str
    target: str
    path: Path

    def describe(self) -> str:
        return (
            f"swap the running domain's config drive to {self.path.name} (the guest reads the "
            "new files from the drive at once)"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.LIVE, (FieldChange(f"medium {self.target}", None, self.path.name),)


@dataclass(frozen=True, slots=True)
class RemoveFiles:
    """Remove files of the instance that nothing uses any more (replaced config drives, data
    disks that left the manifest with deletionPolicy: delete)."""

    kind: ClassVar[StepKind] = StepKind.REMOVE_FILES
    instance: str
    paths: tuple[Path, ...]
    directory: Path  # the instance directory: every path must lie in it (checked again)
    what: str = "replaced config drive"

    def describe(self) -> str:
        return f"remove {self.what} " + ", ".join(str(p) for p in self.paths)

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        removed = FieldChange(self.what, ", ".join(str(p) for p in self.paths), None)
        # a replaced config drive is a file nothing uses; anything else is data
        kept = self.what == "replaced config drive"
        return (Disruption.NONE if kept else Disruption.DELETE), (removed,)


@dataclass(frozen=True, slots=True)
class DefineDomain:
    kind: ClassVar[StepKind] = StepKind.DEFINE
    instance: str
    machine: Machine  # complete: with the uuid (when redefining) and the ownership marker
    changes: tuple[Change, ...]
    effect: str

    def describe(self) -> str:
        what = (
            "define domain"
            if not self.changes
            else "redefine domain: " + ", ".join(change.describe() for change in self.changes)
        )
        return f"{what} ({self.effect})"

    def classes(self) -> frozenset[ChangeClass]:
        return frozenset(change.kind for change in self.changes)

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        if not self.changes:
            return Disruption.NONE, (FieldChange("domain", None, self.instance),)
        disruption = most_disruptive([CLASS_DISRUPTION[c.kind] for c in self.changes])
        fields = tuple(
            FieldChange(c.field, c.found, c.wanted, c.drift)
            if c.field
            else FieldChange(c.what, None, None, c.drift)
            for c in self.changes
        )
        return disruption, fields


@dataclass(frozen=True, slots=True)
class StartDomain:
    kind: ClassVar[StepKind] = StepKind.START
    instance: str
    accelerator: AcceleratorChoice
    image: ImageSource | None = None  # the base under the disk, verified before QEMU opens it
    watch_seconds: float = 0.0  # how long to watch for a pause on error right after start
    host_shutdown: Path | None = None  # the record of a host shutdown, removed once started

    def describe(self) -> str:
        choice = self.accelerator
        again = ", again after the host shut it down" if self.host_shutdown else ""
        return f"start domain{again} (accelerator {choice.accelerator.value}; {choice.reason})"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.NONE, (FieldChange("power", "off", "running"),)


@dataclass(frozen=True, slots=True)
class StopDomain:
    kind: ClassVar[StepKind] = StepKind.STOP
    instance: str
    timeout_seconds: int

    def describe(self) -> str:
        return f"shut down domain (ACPI power button, forced off after {self.timeout_seconds}s)"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.RESTART, (FieldChange("power", "running", "off"),)


@dataclass(frozen=True, slots=True)
class UndefineDomain:
    kind: ClassVar[StepKind] = StepKind.UNDEFINE
    instance: str
    kept: Path
    disks_kept: bool = True

    def describe(self) -> str:
        if not self.disks_kept:
            return f"undefine domain (deletionPolicy: delete: its disks in {self.kept} go next)"
        return f"undefine domain (its disks in {self.kept} are kept)"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.DELETE, (FieldChange("domain", self.instance, None),)


@dataclass(frozen=True, slots=True)
class ThawFilesystems:
    """Thaw the guest's file systems that a snapshot cut short left frozen (its marker file
    says it may have)."""

    kind: ClassVar[StepKind] = StepKind.THAW
    instance: str
    marker: Path

    def describe(self) -> str:
        return "thaw the guest's file systems (a snapshot cut short may have left them frozen)"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.LIVE, (FieldChange("file systems", "frozen", "thawed"),)


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """A restore point of every qcow2 disk of the instance, consistent across them: with the
    guest off, each file with qemu-img; running, in one QMP transaction (the file systems
    frozen through the guest agent first, where there is one)."""

    kind: ClassVar[StepKind] = StepKind.SNAPSHOT
    instance: str
    label: str
    disks: tuple[Path, ...]  # the boot disk first, then the qcow2 data disks
    why: str  # what it precedes, or "on the schedule", or "on request"
    directory: Path  # the instance's: its record is written there
    left_out: tuple[Path, ...] = ()  # raw data disks: they cannot hold a snapshot
    freeze: bool = False  # the guest has an agent that can freeze its file systems
    digest: str | None = None  # the manifest digest of the change it precedes
    moved_to: Path | None = None  # where the replace that follows moves the boot disk

    def describe(self) -> str:
        left = (
            f"; not of the raw disk{'s' if len(self.left_out) > 1 else ''} "
            + ", ".join(p.name for p in self.left_out)
            if self.left_out
            else ""
        )
        return (
            f"snapshot {self.label} of {', '.join(p.name for p in self.disks)} ({self.why}{left})"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.NONE, (FieldChange("snapshot", None, self.label),)


@dataclass(frozen=True, slots=True)
class DeleteSnapshots:
    """Delete snapshots from every disk file that holds them (the policy's keep or expiry):
    the clusters only they used are freed in place; nothing else of the disk changes."""

    kind: ClassVar[StepKind] = StepKind.DELETE_SNAPSHOTS
    instance: str
    labels: tuple[str, ...]
    files: tuple[tuple[Path, ...], ...]  # for each label, the files that hold it
    why: str
    directory: Path

    def describe(self) -> str:
        return f"delete snapshot{'s' if len(self.labels) > 1 else ''} " + (
            f"{', '.join(self.labels)} ({self.why})"
        )

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.NONE, tuple(FieldChange("snapshot", label, None) for label in self.labels)


@dataclass(frozen=True, slots=True)
class ReleaseHold:
    """The manifest changed since a revert held the instance: the hold ends."""

    kind: ClassVar[StepKind] = StepKind.RELEASE_HOLD
    instance: str
    path: Path
    label: str

    def describe(self) -> str:
        return f"end the hold of the revert to {self.label} (the manifest changed since)"

    def review(self) -> Review:
        """Its disruption, and what it changes."""
        return Disruption.NONE, (FieldChange("hold", self.label, None),)


Step = (
    RecoverDomain
    | ResumeDomain
    | FetchBase
    | CreateOverlay
    | ResizeDisk
    | CreateDataDisk
    | MoveDiskAside
    | SetMemory
    | SetVcpus
    | AttachDisk
    | DetachDisk
    | AttachNic
    | DetachNic
    | SetAutostart
    | BuildConfigDrive
    | ChangeMedium
    | RemoveFiles
    | DefineDomain
    | StartDomain
    | StopDomain
    | UndefineDomain
    | ThawFilesystems
    | TakeSnapshot
    | DeleteSnapshots
    | ReleaseHold
)
