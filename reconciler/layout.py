"""Where everything lives in a state directory: the one home of every file name, as pure path
arithmetic (no I/O; statedir.py adds the lock, the id, creation and modes). No other module
spells a name of the state directory: each asks here, and so do the tests.

    STATE/
      id                      a random id made with the directory; domain markers carry it
      lock                    flock held by the process that applies changes (holds its pid)
      control.sock            the daemon's control socket
      status.json             what the daemon last knew of each instance
      validated-documents     the manifest documents the schema accepted in the last pass
      manifest-readings.json  what reading each manifest file gave (a pass reads only the
                              files that changed since)
      parsed-definitions.json the machines libvirt's domain XML described, by its digest
      prune                   while it exists, prune is on (as with --prune)
      git/                    pull mode: the repository, its checkouts, its state
      images/                 base image cache, content-addressed: sha256-<hex>.<format>
      images/.sources/        digests of local sources given without sha256, by file identity
      instances/<name>/       disk.qcow2 (overlay), data-<disk>.<format>, config-<digest>.iso,
                              nvram.fd, console.log, host-shutdown, health.json,
                              snapshot-<label>.json (what a snapshot preceded, its
                              definition), hold.json (held after a revert), fs-frozen
                              (while a snapshot has the guest's file systems frozen); under the
                              QMP driver also
                              domain.json, live.json, qmp.sock, qemu.pid, qemu.log, stopped
      libvirt/                root of libvirt's embedded QEMU driver (when no --connect)
      libvirt.log             libvirt's own warnings and errors
      ssh/known_hosts         the guests' SSH host keys (reconcile ssh, ssh-config)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.model.desired import DataDiskSpec, ImageSource

BOOT_DISK_FILE = "disk.qcow2"
NVRAM_FILE = "nvram.fd"  # UEFI variables
REPLACED_SUFFIX = "replaced"  # a replaced boot disk: disk.qcow2.replaced-<base>
CONFIG_DRIVE_DIGEST_CHARS = 16
QEMU_PID_FILE = "qemu.pid"  # the QMP driver's, in each instance directory
# the files of an instance directory that the reconciler makes, and so may remove
REMOVABLE_FILE = re.compile(
    rf"{re.escape(BOOT_DISK_FILE)}|data-[a-z0-9][a-z0-9-]*\.(qcow2|raw)|config-[0-9a-f]+\.iso|"
    + re.escape(NVRAM_FILE)
    + r"|snapshot-[a-z0-9][a-z0-9._-]*\.json"
)
SNAPSHOT_RECORD = re.compile(r"snapshot-([a-z0-9][a-z0-9._-]*)\.json")


def is_config_drive(file_name: str) -> bool:
    return file_name.startswith("config-") and file_name.endswith(".iso")


@dataclass(frozen=True, slots=True)
class InstancePaths:
    """The files of one instance (those of the QMP driver included)."""

    directory: Path
    disk: Path
    console_log: Path
    host_shutdown: Path  # while it exists: shut down with the host, started at the next pass

    @property
    def nvram(self) -> Path:
        return _child(self.directory, NVRAM_FILE)

    def config_drive(self, digest: str) -> Path:
        """The config drive whose content has this digest (its first characters name it)."""
        return self.directory / f"config-{digest[:CONFIG_DRIVE_DIGEST_CHARS]}.iso"

    def data_disk(self, disk: DataDiskSpec) -> Path:
        return self.directory / disk.file_name

    @property
    def health(self) -> Path:
        """The instance's probes and its Ready and Live conditions (health.record)."""
        return _child(self.directory, "health.json")

    def snapshot_record(self, label: str) -> Path:
        """What snapshot `label` preceded, and the definition to restore with it (the disks
        hold the snapshot itself)."""
        return self.directory / f"snapshot-{label}.json"

    @property
    def hold(self) -> Path:
        """While it exists, a revert holds the instance (model.actual.HoldFacts)."""
        return _child(self.directory, "hold.json")

    @property
    def fs_frozen(self) -> Path:
        """Exists while a snapshot has asked the guest agent to freeze the file systems: one
        left behind by a killed process is thawed by the next pass."""
        return _child(self.directory, "fs-frozen")

    def aside(self, base_name: str) -> Path:
        """Where a replaced boot disk is moved: its name says which base it was built on."""
        return self.directory / f"{BOOT_DISK_FILE}.{REPLACED_SUFFIX}-{base_name[:40]}"

    # the QMP driver's files
    @property
    def definition(self) -> Path:
        """The persistent definition: a Machine as JSON (drivers.definition)."""
        return _child(self.directory, "domain.json")

    @property
    def live_definition(self) -> Path:
        """What the running QEMU was started as, with the live changes made since."""
        return _child(self.directory, "live.json")

    @property
    def legacy_definition(self) -> Path:
        """The definition as earlier versions kept it (libvirt XML), rewritten once."""
        return _child(self.directory, "domain.xml")

    @property
    def legacy_live_definition(self) -> Path:
        return _child(self.directory, "live.xml")

    @property
    def qmp_socket(self) -> Path:
        return _child(self.directory, "qmp.sock")

    @property
    def qemu_pid(self) -> Path:
        return _child(self.directory, QEMU_PID_FILE)

    @property
    def guest_agent_socket(self) -> Path:
        return _child(self.directory, "guest-agent.sock")

    @property
    def qemu_log(self) -> Path:
        return _child(self.directory, "qemu.log")

    @property
    def stopped(self) -> Path:
        """Why the QEMU last stopped, as the QMP driver saw it."""
        return _child(self.directory, "stopped")


@functools.lru_cache(maxsize=65536)
def _child(directory: Path, name: str) -> Path:
    """`directory / name`, kept: a pass asks each instance for its files many times, and
    pathlib's join costs more than finding it here."""
    return directory / name


@functools.lru_cache(maxsize=16384)
def _instance_paths(root: Path, name: str) -> InstancePaths:
    """Kept: every pass builds every instance's paths several times (pathlib is slow)."""
    directory = root / "instances" / name
    return InstancePaths(
        directory,
        directory / BOOT_DISK_FILE,
        directory / "console.log",
        directory / "host-shutdown",
    )


@dataclass(frozen=True, slots=True)
class StateLayout:
    """The paths inside one state directory. Computing them has no side effects."""

    root: Path

    @property
    def images(self) -> Path:
        return _child(self.root, "images")

    @property
    def source_digests(self) -> Path:
        return self.images / ".sources"

    @property
    def instances(self) -> Path:
        return _child(self.root, "instances")

    def instance(self, name: str) -> InstancePaths:
        """Paths for instance `name`, which the schema has already restricted to [a-z0-9-]."""
        return _instance_paths(self.root, name)

    @property
    def rollouts(self) -> Path:
        return _child(self.root, "rollouts")

    def rollout(self, group: str) -> Path:
        """The record of one rollout group ("set/web" -> rollouts/set-web.json); its names
        come from the schema ([a-z0-9-])."""
        kind, _, name = group.partition("/")
        return self.rollouts / f"{kind}-{name}.json"

    def cached_base(self, image: ImageSource) -> Path:
        """The content-addressed cache file for a base image whose digest is known."""
        if image.sha256 is None:
            raise ValueError(f"the digest of {image.location} is not known yet")
        suffix = image.format.value
        if image.convert_to is not None and image.convert_to is not image.format:
            suffix += f".{image.convert_to.value}"  # e.g. sha256-X.qcow2.raw: converted
        return _child(self.images, f"sha256-{image.sha256}.{suffix}")

    @property
    def libvirt_root(self) -> Path:
        """The embedded libvirt driver's root."""
        return _child(self.root, "libvirt")

    def libvirt_definition(self, name: str) -> Path:
        """Where the embedded libvirt driver keeps a domain's persistent definition."""
        return self.libvirt_root / "etc" / "qemu" / f"{name}.xml"

    def libvirt_pid_file(self, name: str) -> Path:
        """The embedded libvirt driver's pid file of a running domain's QEMU."""
        return self.libvirt_root / "run" / "qemu" / f"{name}.pid"

    def libvirt_qemu_log(self, name: str) -> Path:
        """The embedded libvirt driver's log of a domain's QEMU."""
        return self.libvirt_root / "log" / "qemu" / f"{name}.log"

    @property
    def libvirt_driver_pid(self) -> Path:
        """The pid file of the process that holds the embedded libvirt root."""
        return self.libvirt_root / "run" / "qemu" / "driver.pid"

    @property
    def libvirt_log(self) -> Path:
        return _child(self.root, "libvirt.log")

    @property
    def id_file(self) -> Path:
        return _child(self.root, "id")

    @property
    def lock_file(self) -> Path:
        return _child(self.root, "lock")

    @property
    def control_socket(self) -> Path:
        return _child(self.root, "control.sock")

    @property
    def status_file(self) -> Path:
        return _child(self.root, "status.json")

    @property
    def git(self) -> Path:
        return _child(self.root, "git")

    @property
    def validated_documents(self) -> Path:
        """The content keys of the manifest documents the schema accepted in the last pass
        (see manifests.loader.document_key): the next pass skips the schema for those."""
        return _child(self.root, "validated-documents")

    @property
    def manifest_readings(self) -> Path:
        """What reading each manifest file gave, kept between passes (see
        manifests.readingstore): a pass reads again only the files that changed since."""
        return _child(self.root, "manifest-readings.json")

    @property
    def parsed_definitions(self) -> Path:
        """The machines parsed from libvirt's domain XML, by a digest of the text (see
        drivers.parsedstore): a pass parses only the definitions that changed since."""
        return _child(self.root, "parsed-definitions.json")

    @property
    def known_hosts(self) -> Path:
        """The guests' SSH host keys, learnt on first contact (reconcile ssh)."""
        return self.root / "ssh" / "known_hosts"

    @property
    def prune_flag(self) -> Path:
        """While this file exists, prune is on (as with --prune)."""
        return _child(self.root, "prune")
